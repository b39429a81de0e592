"""Quality in a fixed time budget: the project's own console commands, as a user runs them, on the shared ISIC 2018 images.

The design's goal on the 2-core CPU: `lesionseg train` in 15 minutes (128x128, from scratch) scores per-image Dice >= 0.90
and thresholded Jaccard >= 0.80 on images it never saw (a plain PyTorch loop over smp's UNet(ResNet-34) in the same
15 minutes: 0.886 and 0.769). On an H100 the budget is 5 minutes at 256x256, the goal Dice >= 0.91, thresholded Jaccard >= 0.82.

Run from the repository root (on a CUDA machine, unchanged: it picks the GPU's defaults):
    python bench/budget_quality.py                          # CPU: 15 minutes, 128 px; CUDA: 5 minutes, 256 px
    python bench/budget_quality.py --budget 5               # a shorter look
    python bench/budget_quality.py --limit 480 --out bench/results/budget_quality_cpu_480.json   # bench/quality.py's 480 images

On the CPU it trains Swin-T + UPerNet with a 128-channel decoder (the full model's 256 channels cost 1.65 times the time
a step) in bfloat16 where the CPU has it natively (AVX512-BF16, AMX: 2.0 times faster than fp32 on the 2-core EPYC;
both measured by `python bench/cpu_bf16.py`, bench/results/cpu_bf16.json).

It runs three commands in subprocesses, exactly as the README shows them, and times each:
    lesionseg prepare SHARED PREP --size S          (hash splits: 80% train, 10% valid, 10% test, by ISIC id)
    lesionseg train --data PREP --budget MIN --recipe tuned --no-pretrained --patience 0 ...
    lesionseg evaluate --weights PREP_RUN/model.pth --data PREP --split test [--postprocess, as the recipe says]
`--budget` fits fastai's one cycle into the minutes given (lesson 01d, `TimeBudget`): training and validation of every
epoch count; preparing the data, the review-threshold calibration at the end and the evaluation do not, and are timed
on their own. Scores are per-image means at each test image's original resolution (256x192), as ISIC 2018 scores.
"""
import argparse, json, os, shlex, subprocess, sys, tempfile, time
from pathlib import Path
os.environ.setdefault('HF_HUB_OFFLINE', '1')

from _common import SHARED, device_defaults, load1, machine, write_json
GOALS = {'cpu': dict(dice=0.90, thresholded_jaccard=0.80), 'cuda': dict(dice=0.91, thresholded_jaccard=0.82)}
REFERENCE = {'cpu': dict(what="a plain PyTorch loop over smp UNet(ResNet-34), 15 minutes, this 2-core CPU, 128 px (DESIGN.md)",
                         dice=0.886, thresholded_jaccard=0.769),
             'cuda': dict(what="smp UNet(ResNet-34) and UPerNet(Swin-T), 60 epochs (DESIGN.md)", dice=0.89, thresholded_jaccard=0.78)}
KEYS = ('n', 'dice', 'iou', 'thresholded_jaccard', 'dice_pooled', 'iou_pooled')

def sh(*args) -> tuple[float, str]:
    "Run `lesionseg ARGS`, fail loudly with its output; the seconds it took and its stdout."
    cmd = ['lesionseg', *map(str, args)]
    print('$', ' '.join(cmd), flush=True)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode: sys.exit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return round(time.perf_counter() - t0, 1), r.stdout

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--data', default=str(SHARED), help='source folder in ISIC naming (images/, masks/)')
    ap.add_argument('--arch', default='swin-upernet', choices=['swin-upernet', 'unet'])
    ap.add_argument('--recipe', default='tuned', help="lesson 04's recipe: 'tuned', 'baseline' or JSON (default tuned)")
    ap.add_argument('--budget', type=float, default=None, help='training minutes (default: 5 on CUDA, 15 on CPU)')
    ap.add_argument('--size', type=int, default=None, help='training side (default: 256 on CUDA, 128 on CPU)')
    ap.add_argument('--bs', type=int, default=None, help='batch size (default: 32 on CUDA, 16 on CPU)')
    ap.add_argument('--config', default=None, help='model options as JSON (default: \'{"decoder_channels": 128}\' on CPU, the full model on CUDA)')
    ap.add_argument('--precision', default=None, choices=['auto', 'fp32', 'bf16', 'fp16'],
                    help='training precision (default: auto on CUDA, i.e. mixed; bf16 on a CPU with native bfloat16, else fp32)')
    ap.add_argument('--limit', type=int, default=None, help='the first N images by ISIC id only (default: all 2098)')
    ap.add_argument('--seed', type=int, default=42)
    ap.add_argument('--out', default=None, help='JSON path (default: bench/results/budget_quality_<cuda|cpu>.json)')
    a = ap.parse_args()
    from lesionseg.callbacks import cpu_bf16_supported
    dev, gpu = device_defaults(a, (('budget', 5., 15.), ('size', 256, 128), ('bs', 32, 16), ('config', '{}', '{"decoder_channels": 128}'),
                                   ('precision', 'auto', 'bf16' if cpu_bf16_supported() else 'fp32')))
    src = Path(a.data)
    if not (src/'images').is_dir(): sys.exit(f"{src}: expected a folder with images/ and masks/ in ISIC naming (the shared ISIC 2018 folder).")
    load0 = load1()
    with tempfile.TemporaryDirectory() as tmp:
        prep, run = Path(tmp)/'prepared', Path(tmp)/'run'
        t_prep, _ = sh('prepare', src, prep, '--size', a.size, '--quiet', *(['--limit', a.limit] if a.limit else []))
        train_cmd = ['train', '--data', prep, '--arch', a.arch, '--budget', a.budget, '--recipe', a.recipe, '--bs', a.bs,
                     '--out', run, '--seed', a.seed, '--config', a.config, '--precision', a.precision, '--no-pretrained', '--patience', 0, '--no-resume', '--quiet']
        t_train, _ = sh(*train_cmd)
        m = json.loads((run/'metrics.json').read_text())
        post = bool((m.get('recipe') or {}).get('postprocess')); tta = bool((m.get('recipe') or {}).get('tta'))
        eval_cmd = ['evaluate', '--weights', run/'model.pth', '--data', prep, '--split', 'test', '--out', run/'eval', '--quiet',
                    *(['--postprocess'] if post else []), *(['--tta'] if tta else [])]
        t_eval, _ = sh(*eval_cmd)
        ev = json.loads((run/'eval'/'summary.json').read_text())
    kind = dev.type
    test = {k: (round(ev[k], 4) if isinstance(ev[k], float) else ev[k]) for k in KEYS}
    goal, ref = GOALS[kind], REFERENCE[kind]
    res = dict(benchmark='budget_quality', command='python ' + ' '.join([sys.argv[0]] + sys.argv[1:]), device=kind,
               commands=['lesionseg prepare SHARED PREP --size %d --quiet' % a.size + (f' --limit {a.limit}' if a.limit else ''),
                         *('lesionseg ' + shlex.join(str(o) for o in c).replace(str(prep), 'PREP').replace(str(run), 'RUN') for c in (train_cmd, eval_cmd))],
               data=f"{src.name}: {m['n_train']} train, {m['n_valid']} valid, {test['n']} test images (hash splits by ISIC id); "
                    "scored on test at the original 256x192", arch=a.arch, config=json.loads(a.config), precision=a.precision, size=a.size, bs=a.bs, seed=a.seed, pretrained=False,
               recipe=m.get('recipe'), budget_minutes=a.budget,
               train=dict(fit_seconds=m['seconds'], command_seconds=t_train, epochs_planned=m['epochs_planned'], epochs=m['epochs'],
                          best_epoch=m['best_epoch'], images_per_s=m['images_per_s'], valid=m['best']),
               prepare_seconds=t_prep, evaluate_seconds=t_eval, postprocess=post, tta=tta, test=test,
               goal=goal, goal_met={k: test[k] >= v for k, v in goal.items()}, reference=ref,
               vs_reference={k: round(test[k] - ref[k], 4) for k in ('dice', 'thresholded_jaccard')},
               machine=machine(gpu, load0))
    write_json(a.out or f'bench/results/budget_quality_{kind}.json', res)
    print(json.dumps(res, indent=2))

if __name__ == '__main__': main()
