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
import argparse, contextlib, json, os, sys, tempfile, time
from pathlib import Path
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import torch
from lesionseg.preprocessing import prepare
from lesionseg.learner import train
from lesionseg.evaluate import evaluate
from lesionseg.tuned import ABLATIONS, variant_recipe, select_tuned, train_tuned, check_recipe, baseline_recipe, ablation_table

from _common import SHARED, device_defaults, load1, machine, write_json
KEYS = ('n', 'dice', 'iou', 'thresholded_jaccard', 'dice_pooled', 'iou_pooled')
BUDGET_S = 300 # seconds of H100 training a row may take (the goal: <= 5 minutes)

def _scores(weights, prepared, recipe, split):
    ev = evaluate(weights, prepared, out=None, split=split, progress=False, tta=recipe['tta'], postprocess=recipe['postprocess'])
    return {k: (round(ev[k], 4) if isinstance(ev[k], float) else ev[k]) for k in KEYS}

def _train_part(recipe): return {k: recipe[k] for k in ('aug', 'loss')}

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
    rows = [n for n in ABLATIONS if n in a.variants] # in the table's order
    needs_base = any(ABLATIONS[n].get('retrain') is False or n == 'tuned' for n in rows)
    train_rows = [n for n in rows if ABLATIONS[n].get('retrain', True) and n != 'tuned']
    if needs_base and 'baseline' not in train_rows: train_rows.insert(0, 'baseline')
    load0 = load1()
    if a.workdir is not None: Path(a.workdir).mkdir(parents=True, exist_ok=True)
    with (tempfile.TemporaryDirectory() if a.workdir is None else contextlib.nullcontext(a.workdir)) as tmp:
        tmp = Path(tmp); prepared = tmp/'prepared'
        m = prepare(src, prepared, size=a.size, limit=a.limit, progress=False)
        splits = {k: int(v) for k, v in m['split'].value_counts().items()}
        res = dict(benchmark='ablation', command='python ' + ' '.join([sys.argv[0]] + sys.argv[1:]), device=dev.type,
                   data=f"{src.name}: {len(m)} images {splits}; trained on train (best epoch by valid Dice), chosen on valid, "
                        "reported on test, scored at the original 256x192",
                   size=a.size, epochs=a.epochs, bs=a.bs, seed=a.seed, pretrained=False, arch='swin-upernet',
                   budget_seconds=BUDGET_S if gpu else None, goal=dict(dice=0.91, thresholded_jaccard=0.82), variants={})
        models = {} # row -> (weights, training summary)
        common = dict(arch='swin-upernet', bs=a.bs, lr=a.lr, seed=a.seed, pretrained=False, patience=None, resume=False, progress=False, device=dev)

        def fit(name, recipe, factor):
            out = tmp/'models'/name
            t0 = time.time()
            if recipe is None: s = train(prepared, epochs=a.epochs*factor, out=out, **common) # train()'s own defaults
            else: s = train_tuned(prepared, recipe=recipe, epochs=a.epochs*factor, out=out, **common)
            models[name] = (out/'model.pth', s, round(time.time() - t0, 1))

        def record(name, model, recipe, factor, change=None, **extra):
            w, s, wall = models[model]
            t0 = time.time()
            row = dict(change=change or ABLATIONS[name]['change'], group=ABLATIONS[name]['group'], model=model, recipe=recipe,
                       epochs=a.epochs*factor, train_seconds=s['seconds'], train_images_per_s=s['images_per_s'],
                       within_budget=(s['seconds'] <= BUDGET_S) if gpu else None, best_epoch=s['best_epoch'],
                       n_train=s['n_train'], n_valid=s['n_valid'], **extra)
            r = recipe or baseline_recipe()
            row['valid'], row['test'] = _scores(w, prepared, r, 'valid'), _scores(w, prepared, r, 'test')
            row['wall_seconds'] = round((wall if model == name else 0) + time.time() - t0, 1)
            res['variants'][name] = row
            print(name, json.dumps(row), flush=True)

        for name in train_rows:
            spec = ABLATIONS[name]
            recipe = None if name == 'baseline' else variant_recipe(name)
            fit(name, recipe, spec.get('epochs_factor', 1))
            record(name, name, recipe, spec.get('epochs_factor', 1))
        for name in rows:
            if ABLATIONS[name].get('retrain') is False: record(name, 'baseline', variant_recipe(name), 1)
        if 'tuned' in rows:
            measured = {n: v['valid'] for n, v in res['variants'].items() if n != 'tuned'}
            sel = select_tuned(measured)
            recipe, factor = sel['recipe'], sel['epochs_factor']
            same = factor == 1 and _train_part(recipe) == _train_part(baseline_recipe())
            if not same: fit('tuned', recipe, factor)
            record('tuned', 'baseline' if same else 'tuned', recipe, factor,
                   change=f"{ABLATIONS['tuned']['change']}: {', '.join(v for v in sel['chosen'].values() if v) or 'nothing beat the baseline'}",
                   reused_baseline_model=same)
            res['selection'] = dict(sel, metric='valid per-image dice')
        else: res['selection'] = dict(chosen={}, epochs_factor=None, reason='no tuned row in this run')
    res['machine'] = machine(gpu, load0)
    out = write_json(a.out or f'bench/results/ablation_{dev.type}.json', res)
    print(ablation_table(res).round(4).to_string())
    print('wrote', out)

if __name__ == '__main__': main()
