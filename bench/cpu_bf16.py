"""Training step cost on the CPU: fp32 against bfloat16 autocast, and the UPerNet decoder's width, side by side in one run.

Run from the repository root:
    python bench/cpu_bf16.py
    python bench/cpu_bf16.py --size 128 --bs 16 --steps 4 --rounds 3

Each configuration is a freshly built Swin-T + UPerNet (from scratch) trained on one fixed random batch with Dice+BCE
and AdamW, through lesionseg's fastai `Learner` (`seg_learner(..., fp16=False)` for fp32, `fp16='bf16'` for
`CPUMixedPrecision`). Timed over --steps steps after --warmup, in --rounds interleaved rounds (median).
Images/s = steps * bs / seconds; the JSON has each rate and the ratios. bf16 is only measured where the CPU computes it
natively (`cpu_bf16_supported`: AVX512-BF16 or AMX); elsewhere the JSON says so.
"""
import argparse, os, statistics, sys, time, warnings
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import torch
from fastai.callback.core import Callback, CancelFitException
from fastai.data.core import DataLoaders
from fastai.torch_core import set_seed
from lesionseg.learner import seg_learner
from lesionseg.weights import build_model
from lesionseg.callbacks import cpu_bf16_supported

from _common import load1, machine, write_json

class Timer(Callback):
    "Time --steps training steps after --warmup, then stop the fit."
    order = 99
    def __init__(self, warmup, steps): self.warmup, self.steps, self.n, self.t0, self.seconds = warmup, steps, 0, None, None
    def after_batch(self):
        if not self.training: return
        self.n += 1
        if self.n == self.warmup: self.t0 = time.perf_counter()
        if self.n == self.warmup + self.steps: self.seconds = time.perf_counter() - self.t0; raise CancelFitException()

def rate(dc, precision, a, dls) -> float:
    set_seed(a.seed)
    model = build_model('swin-upernet', {'pretrained': False, 'img_size': a.size, 'decoder_channels': dc})
    learn = seg_learner(dls, model, fp16='bf16' if precision == 'bf16' else False, metrics=[])
    t = Timer(a.warmup, a.steps)
    with learn.no_bar(), warnings.catch_warnings():
        warnings.simplefilter('ignore'); learn.fit(1, 1e-3, cbs=t)
    return a.steps*a.bs/t.seconds

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--size', type=int, default=128)
    ap.add_argument('--bs', type=int, default=16)
    ap.add_argument('--decoders', type=int, nargs='+', default=[128, 256], help='UPerNet decoder channels to compare')
    ap.add_argument('--steps', type=int, default=4)
    ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--seed', type=int, default=42)
    ap.add_argument('--out', default='bench/results/cpu_bf16.json')
    a = ap.parse_args()
    load0, bf16 = load1(), cpu_bf16_supported()
    g = torch.Generator().manual_seed(a.seed)
    x = torch.randn(a.bs, 3, a.size, a.size, generator=g)
    y = (torch.rand(a.bs, a.size, a.size, generator=g) > 0.5).long()
    ds = [(x[i], y[i]) for i in range(a.bs)]
    dls = DataLoaders.from_dsets(ds*(a.warmup + a.steps + 1), ds, bs=a.bs, shuffle=False, device='cpu')
    precisions = ['fp32'] + (['bf16'] if bf16 else [])
    rounds = {f'dc{dc} {p}': [] for dc in a.decoders for p in precisions}
    for r in range(a.rounds): # interleaved: a busy moment hits every configuration alike
        for dc in a.decoders:
            for p in precisions:
                rounds[f'dc{dc} {p}'].append(round(rate(dc, p, a, dls), 2)); print(r, dc, p, rounds[f'dc{dc} {p}'][-1], flush=True)
    med = {k: statistics.median(v) for k, v in rounds.items()}
    ratios = {}
    if bf16: ratios.update({f'dc{dc} bf16 / fp32': round(med[f'dc{dc} bf16']/med[f'dc{dc} fp32'], 2) for dc in a.decoders})
    for p in precisions:
        for dc in a.decoders[1:]: ratios[f'dc{a.decoders[0]} / dc{dc} ({p})'] = round(med[f'dc{a.decoders[0]} {p}']/med[f'dc{dc} {p}'], 2)
    res = dict(benchmark='cpu_bf16', command='python ' + ' '.join([sys.argv[0]] + sys.argv[1:]), device='cpu', size=a.size, bs=a.bs,
               steps=a.steps, warmup=a.warmup, rounds=a.rounds, threads=torch.get_num_threads(), cpu_bf16_supported=bf16,
               what="Swin-T + UPerNet from scratch, training steps through seg_learner on one fixed random batch (data loading excluded)",
               img_per_s=med, all_rounds=rounds, ratios=ratios, machine=machine(False, load0))
    write_json(a.out, res)
    print(res['img_per_s'], res['ratios'])

if __name__ == '__main__': main()
