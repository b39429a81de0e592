"""Cost of N Monte Carlo Dropout samples relative to one deterministic forward pass:
fast (`features` once + one batched `classify`, `lesionseg.mc.mc_logits`) against the naive loop of
N full forward passes (`naive_mc_logits`), measured in the same run, in interleaved rounds, for
Swin-T+UPerNet (dropout before the classifier, the default; and on every FPN level, the earlier design)
and UNet(ResNet-34). Runs unchanged on a GPU (warm-up, cuda synchronize).

usage: python bench/mc_dropout.py [--n 20] [--size 256] [--bs 1] [--rounds 5] [--device cpu|cuda] [--models swin-head,swin-fpn,unet]
writes bench/results/mc_dropout_<cpu|cuda>.json
"""
import argparse, json, os, platform, statistics, sys, time
from pathlib import Path
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import warnings; warnings.filterwarnings('ignore', message='.*torch.jit.script.*')
import torch
from lesionseg.upernet import SwinUPerNet
from lesionseg.unet import UNet
from lesionseg.mc import mc_logits, naive_mc_logits

MODELS = {
    'swin-head': lambda s: SwinUPerNet(img_size=s, pretrained=False),  # the default config
    'swin-fpn': lambda s: SwinUPerNet(img_size=s, pretrained=False, dropout_at='fpn'),
    'unet': lambda s: UNet(img_size=s, pretrained=False, arch='resnet34'),
}

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n', type=int, default=20, help='MC samples')
    ap.add_argument('--size', type=int, default=256)
    ap.add_argument('--bs', type=int, default=1)
    ap.add_argument('--rounds', type=int, default=5, help='interleaved rounds; medians are reported')
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--models', default=','.join(MODELS))
    ap.add_argument('--out', default=None, help='default: bench/results/mc_dropout_<device type>.json')
    a = ap.parse_args()
    dev = torch.device(a.device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == 'cuda' else (lambda: None)
    torch.manual_seed(0)
    load0 = os.getloadavg()  # the machine is shared: what else ran, 1/5/15-minute averages
    names = a.models.split(',')
    models = {k: MODELS[k](a.size).to(dev).eval() for k in names}
    x = torch.randn(a.bs, 3, a.size, a.size, device=dev)
    fns = {'forward': lambda m: m(x), 'fast': lambda m: mc_logits(m, x, a.n), 'naive': lambda m: naive_mc_logits(m, x, a.n)}
    times = {k: {f: [] for f in fns} for k in names}
    with torch.inference_mode():
        for k in names:  # warm-up: every path of every model once (twice on a GPU: kernel selection)
            for _ in range(2 if dev.type == 'cuda' else 1):
                for f in fns.values(): f(models[k]); sync()
        for r in range(a.rounds):
            for k in names:
                order = list(fns) if r % 2 == 0 else list(fns)[::-1]  # alternate the order within a round too
                for f in order:
                    sync(); t0 = time.perf_counter(); fns[f](models[k]); sync()
                    times[k][f].append(time.perf_counter() - t0)
            print(f'round {r + 1}/{a.rounds}: ' + ', '.join(f"{k} fwd {1e3*times[k]['forward'][-1]:.0f} ms fast {1e3*times[k]['fast'][-1]:.0f} ms "
                                                             f"naive {1e3*times[k]['naive'][-1]:.0f} ms" for k in names), flush=True)
    res = {}
    for k in names:
        med = {f: statistics.median(v) for f, v in times[k].items()}
        res[k] = dict(median_s=med, all_s=times[k], fast_over_forward=med['fast']/med['forward'],
                      naive_over_forward=med['naive']/med['forward'], naive_over_fast=med['naive']/med['fast'],
                      config=models[k].config)
        print(f"{k}: forward {1e3*med['forward']:.1f} ms; {a.n} samples fast {1e3*med['fast']:.1f} ms "
              f"({res[k]['fast_over_forward']:.2f}x a forward), naive {1e3*med['naive']:.0f} ms ({res[k]['naive_over_forward']:.1f}x)")
    out = Path(a.out or Path(__file__).parent/'results'/f'mc_dropout_{dev.type}.json')
    info = dict(command='python ' + ' '.join(sys.argv), device=str(dev), loadavg_start=load0, loadavg=os.getloadavg(),
                device_name=torch.cuda.get_device_name(dev) if dev.type == 'cuda' else platform.processor() or platform.machine(),
                torch=torch.__version__, threads=torch.get_num_threads(), n_samples=a.n, size=a.size, batch=a.bs, rounds=a.rounds,
                dtype='float32', mode='eval, torch.inference_mode', goal='fast <= 1.5x one forward for 20 samples', results=res)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix('.json.tmp'); tmp.write_text(json.dumps(info, indent=1)); tmp.replace(out)
    print('wrote', out)

if __name__ == '__main__': main()
