"""Training throughput: lesionseg's fastai Learner against a plain PyTorch loop over the same model and data.

Run from the repository root (the GPU figure: on a CUDA machine, unchanged):
    python bench/train_throughput.py                      # both models, sizes chosen for the device
    python bench/train_throughput.py --arch swin-upernet --size 256 --bs 32 --steps 40

Both ways train the same freshly initialised model (same seed), on the same prepared images (the shared ISIC
2018 folder, prepared once at --size into a temporary cache), through the same fastai DataLoaders (albumentations
on every image, --workers worker processes: data loading is included), with Dice+BCE and AdamW; on CUDA both use
bf16 autocast and channels-last. The plain loop is `for xb, yb in dls.train: loss.backward(); opt.step()`; the
Learner is `seg_learner(dls, model).fit_one_cycle(...)` with its default callbacks (progress bar off). Each is
timed over --steps batches after --warmup batches, inside one epoch, in --rounds interleaved rounds (median).
Images/s = steps * bs / seconds. Writes a JSON (--out) with both rates, their ratio and the machine.
"""
import argparse, json, os, statistics, sys, tempfile, time, warnings
from pathlib import Path
os.environ.setdefault('HF_HUB_OFFLINE', '1') # no pretrained weights are needed to time training
import torch, numpy as np
from fastai.callback.core import Callback, CancelFitException
from fastai.torch_core import set_seed
from lesionseg.preprocessing import prepare
from lesionseg.data import get_dls
from lesionseg.learner import seg_learner
from lesionseg.weights import build_model
from lesionseg.metrics import DiceBCELoss

from _common import SHARED, device_defaults, load1, machine, write_json
CONFIGS = {'swin-upernet': dict(pretrained=False), 'unet': dict(pretrained=False, arch='resnet34')}

def sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize()

def make_model(arch, size, seed, dev):
    set_seed(seed)
    m = build_model(arch, {**CONFIGS[arch], 'img_size': size}).to(dev)
    return m.to(memory_format=torch.channels_last) if dev.type == 'cuda' else m

def plain_loop(dls, arch, size, a, dev):
    "img/s of a plain PyTorch training loop over `dls.train`."
    model = make_model(arch, size, a.seed, dev); model.train()
    opt, loss_fn = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-2), DiceBCELoss()
    amp = dict(device_type='cuda', dtype=torch.bfloat16, enabled=dev.type == 'cuda')
    t0 = None
    for i, (xb, yb) in enumerate(dls.train):
        if i == a.warmup: sync(dev); t0 = time.perf_counter()
        if i == a.warmup + a.steps: break
        xb, yb = xb.as_subclass(torch.Tensor), yb.as_subclass(torch.Tensor)
        if dev.type == 'cuda': xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(**amp): loss = loss_fn(model(xb), yb)
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    sync(dev)
    return a.steps*a.bs/(time.perf_counter() - t0)

class _Clock(Callback):
    "Times batches `warmup` .. `warmup + steps` of the first epoch, then stops the fit."
    order = 100
    def __init__(self, warmup, steps, dev): self.warmup, self.steps, self.dev, self.t0 = warmup, steps, dev, None
    def before_batch(self):
        if self.iter == self.warmup: sync(self.dev); self.t0 = time.perf_counter()
    def after_batch(self):
        if self.iter == self.warmup + self.steps - 1:
            sync(self.dev); self.seconds = time.perf_counter() - self.t0; raise CancelFitException()

def learner_loop(dls, arch, size, a, dev):
    "img/s of lesionseg's Learner (`seg_learner`, fit_one_cycle) over the same batches."
    learn = seg_learner(dls, make_model(arch, size, a.seed, dev))
    clock = _Clock(a.warmup, a.steps, dev)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, a.lr, cbs=clock)
    return a.steps*a.bs/clock.seconds

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--arch', nargs='+', default=['swin-upernet', 'unet'], choices=list(CONFIGS))
    ap.add_argument('--data', default=str(SHARED), help='source folder (ISIC naming) to prepare, or a prepared folder')
    ap.add_argument('--size', type=int, default=None, help='image side (default: 256 on CUDA, 128 on CPU)')
    ap.add_argument('--bs', type=int, default=None, help='batch size (default: 32 on CUDA: 48 batches must fit in one epoch of the shared images; 8 on CPU)')
    ap.add_argument('--steps', type=int, default=None, help='timed batches (default: 40 on CUDA, 8 on CPU)')
    ap.add_argument('--warmup', type=int, default=None, help='untimed batches first (default: 8 on CUDA, 2 on CPU)')
    ap.add_argument('--rounds', type=int, default=None, help='interleaved rounds (default: 3 on CUDA, 2 on CPU)')
    ap.add_argument('--workers', type=int, default=None, help='DataLoader workers (default: CPUs, at most 16)')
    ap.add_argument('--lr', type=float, default=1e-4)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--out', default=None, help='JSON path (default: bench/results/train_throughput_<cuda|cpu>.json)')
    a = ap.parse_args()
    dev, gpu = device_defaults(a, (('size', 256, 128), ('bs', 32, 8), ('steps', 40, 8), ('warmup', 8, 2), ('rounds', 3, 2)))
    if a.workers is None: a.workers = min(16, len(os.sched_getaffinity(0)))
    if gpu: torch.backends.cudnn.benchmark = True
    load0 = load1()
    tmp = tempfile.TemporaryDirectory()
    src = Path(a.data)
    prepared = src if (src/'manifest.csv').exists() else Path(tmp.name)/'prepared'
    if prepared != src: prepare(src, prepared, size=a.size, progress=False)
    dls = get_dls(prepared, bs=a.bs, num_workers=a.workers, seed=a.seed, device=dev)
    n_batches = len(dls.train)
    if a.warmup + a.steps > n_batches: sys.exit(f"--warmup + --steps = {a.warmup + a.steps} > {n_batches} batches in one epoch: lower them or --bs")
    res = dict(benchmark='train_throughput', command='python ' + ' '.join([sys.argv[0]] + sys.argv[1:]),
               device=dev.type, size=a.size, bs=a.bs, steps=a.steps, warmup=a.warmup, rounds=a.rounds, workers=a.workers,
               data=f'{src.name} prepared at {a.size}x{a.size}: {n_batches} training batches an epoch', models={})
    for arch in a.arch:
        r = dict(plain=[], learner=[])
        for i in range(a.rounds): # interleaved, alternating which goes first
            for way in (('plain', 'learner') if i % 2 == 0 else ('learner', 'plain')):
                r[way].append(round((plain_loop if way == 'plain' else learner_loop)(dls, arch, a.size, a, dev), 2))
                print(arch, way, r[way][-1], 'img/s', flush=True)
        p, l = statistics.median(r['plain']), statistics.median(r['learner'])
        res['models'][arch] = dict(plain_img_per_s=p, learner_img_per_s=l, learner_over_plain=round(l/p, 3),
                                   plain_rounds=r['plain'], learner_rounds=r['learner'])
    res['machine'] = machine(gpu, load0)
    write_json(a.out or f'bench/results/train_throughput_{dev.type}.json', res)
    print(json.dumps(res, indent=2)); tmp.cleanup()

if __name__ == '__main__': main()
