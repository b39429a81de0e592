"""Ablation of the tuned recipe (lesson 04): each change alone against the Swin-T+UPerNet baseline, from scratch on the shared
ISIC 2018 images, scored on the validation split (to choose) and the test split (to report), then the tuned row: the best of each
group on the validation split, combined, trained from scratch.

Run from the repository root (the GPU figures: on a CUDA machine, unchanged):
    python bench/ablation.py                                    # every row; sizes and lengths chosen for the device
    python bench/ablation.py --variants baseline tta postprocess --out /tmp/abl.json

Rows (`lesionseg.tuned.ABLATIONS`): baseline (`train`'s defaults: train_augs, DiceBCELoss(1, 1), one cycle of --epochs);
strong_aug (`strong_augs`); long (2 x --epochs); loss_dice2, loss_dice_only, loss_boundary (`BoundaryDiceBCELoss`); tta,
postprocess, tta_postprocess (the baseline's model, no retraining); tuned (`select_tuned` on the validation per-image Dice,
trained with `train_tuned`; when it changes nothing in training, the baseline's model is reused). Rows that need the baseline
(the inference rows, tuned) train it too. The shared folder is prepared once at --size (`lesionseg.preprocessing.prepare`:
splits by a hash of the ISIC id; --limit keeps the first N ids). Each model starts from random weights (`pretrained=False`), keeps
the weights of its best validation epoch, and is scored by `lesionseg.evaluate.evaluate` at the images' original resolution: per-
image means of Dice, IoU and ISIC's thresholded Jaccard, pooled Dice and IoU. The JSON records this command, the device, the
machine's load, each row's training seconds (the budget on an H100 is 300 s a row) and scores, and the selection.
"""
import argparse, contextlib, os, sys, tempfile
from pathlib import Path
os.environ.setdefault('HF_HUB_OFFLINE', '1')
from lesionseg.preprocessing import prepare
from lesionseg.evaluate import evaluate
from lesionseg.tuned import ABLATIONS, run_ablation, ablation_table

from _common import SHARED, device_defaults, load1, machine, write_json
BUDGET_S = 300 # seconds of H100 training a row may take (the goal: <= 5 minutes)

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--variants', nargs='+', default=list(ABLATIONS), choices=list(ABLATIONS), help='rows to run (default: all)')
    ap.add_argument('--data', default=str(SHARED), help='source folder in ISIC naming (images/, masks/)')
    ap.add_argument('--size', type=int, default=None, help='training side (default: 256 on CUDA, 128 on CPU)')
    ap.add_argument('--epochs', type=int, default=None, help="the baseline's one-cycle epochs; the long rows take a multiple (default: 30 on CUDA, 4 on CPU)")
    ap.add_argument('--bs', type=int, default=None, help='batch size (default: 32 on CUDA, 16 on CPU)')
    ap.add_argument('--limit', type=int, default=None, help='use the first N images only (default: all on CUDA, 480 on CPU)')
    ap.add_argument('--lr', type=float, default=None, help="peak learning rate (default: train()'s)")
    ap.add_argument('--seed', type=int, default=42)
    ap.add_argument('--workdir', default=None, help='keep the prepared images and the trained models here (default: a temporary folder, removed)')
    ap.add_argument('--out', default=None, help='JSON path (default: bench/results/ablation_<cuda|cpu>.json)')
    a = ap.parse_args()
    dev, gpu = device_defaults(a, (('size', 256, 128), ('epochs', 30, 4), ('bs', 32, 16), ('limit', None, 480)))
    src = Path(a.data)
    if not (src/'images').is_dir(): sys.exit(f"{src}: expected a folder with images/ and masks/ in ISIC naming (the shared ISIC 2018 folder).")
    load0 = load1()
    if a.workdir is not None: Path(a.workdir).mkdir(parents=True, exist_ok=True)
    with (tempfile.TemporaryDirectory() if a.workdir is None else contextlib.nullcontext(a.workdir)) as tmp:
        tmp = Path(tmp); prepared = tmp/'prepared'
        m = prepare(src, prepared, size=a.size, limit=a.limit, progress=False)
        splits = {k: int(v) for k, v in m['split'].value_counts().items()}
        score = lambda w, d, split, tta, postprocess: evaluate(w, d, out=None, split=split, progress=False, tta=tta, postprocess=postprocess)
        abl = run_ablation(prepared, score, rows=a.variants, out=tmp/'models', epochs=a.epochs, resume=False, arch='swin-upernet',
                           bs=a.bs, lr=a.lr, seed=a.seed, pretrained=False, patience=None, progress=False, device=dev)
    for row in abl['variants'].values(): row['within_budget'] = (row['train_seconds'] <= BUDGET_S) if gpu else None
    res = dict(benchmark='ablation', command='python ' + ' '.join([sys.argv[0]] + sys.argv[1:]), device=dev.type,
               data=f"{src.name}: {len(m)} images {splits}; trained on train (best epoch by valid Dice), chosen on valid, "
                    "reported on test, scored at the original 256x192",
               size=a.size, epochs=a.epochs, bs=a.bs, seed=a.seed, pretrained=False, arch='swin-upernet',
               budget_seconds=BUDGET_S if gpu else None, goal=dict(dice=0.91, thresholded_jaccard=0.82), **abl)
    res['machine'] = machine(gpu, load0)
    out = write_json(a.out or f'bench/results/ablation_{dev.type}.json', res)
    print(ablation_table(res).round(4).to_string())
    print('wrote', out)

if __name__ == '__main__': main()
