"""Quality from scratch: both models trained with `lesionseg.learner.train` on the shared ISIC 2018 images and scored
with `lesionseg.evaluate.evaluate` on the manifest's test split, a part of the share never used in training.

Run from the repository root (the GPU figure: on a CUDA machine, unchanged):
    python bench/quality.py                       # both models; sizes and lengths chosen for the device
    python bench/quality.py --arch unet --size 256 --epochs 60 --bs 32

The shared folder is prepared once at --size (`lesionseg.preprocessing.prepare`: deterministic splits by a hash of
the ISIC id; --limit keeps the first N ids, for a CPU run that finishes). Each model starts from random weights
(`pretrained=False`: the hub is unreachable here; with ImageNet weights the numbers are better), trains --epochs of
fastai's one-cycle schedule on the train split with Dice + BCE, keeps the weights with the best validation Dice, and
is scored at each image's original resolution (256x192) on the test split: per-image means of Dice, IoU and ISIC's
thresholded Jaccard, and the pooled Dice and IoU. The JSON records the training seconds (the budget on an H100 is
300 s), the images, the machine and this command.
"""
import argparse, json, os, sys, tempfile, time
from pathlib import Path
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import torch
from lesionseg.preprocessing import prepare
from lesionseg.learner import train
from lesionseg.evaluate import evaluate

from _common import SHARED, device_defaults, load1, machine, write_json
CONFIGS = {'swin-upernet': {}, 'unet': {'arch': 'resnet34'}}
KEYS = ('n', 'dice', 'iou', 'thresholded_jaccard', 'dice_pooled', 'iou_pooled')

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--arch', nargs='+', default=['unet', 'swin-upernet'], choices=list(CONFIGS))
    ap.add_argument('--data', default=str(SHARED), help='source folder in ISIC naming (images/, masks/)')
    ap.add_argument('--size', type=int, default=None, help='training side (default: 256 on CUDA, 128 on CPU)')
    ap.add_argument('--epochs', type=int, default=None, help='one-cycle epochs (default: 60 on CUDA, 4 on CPU)')
    ap.add_argument('--bs', type=int, default=None, help='batch size (default: 32 on CUDA, 16 on CPU)')
    ap.add_argument('--limit', type=int, default=None, help='use the first N images only (default: all on CUDA, 480 on CPU)')
    ap.add_argument('--lr', type=float, default=None, help="peak learning rate (default: train()'s)")
    ap.add_argument('--seed', type=int, default=42)
    ap.add_argument('--out', default=None, help='JSON path (default: bench/results/quality_<cuda|cpu>.json)')
    a = ap.parse_args()
    dev, gpu = device_defaults(a, (('size', 256, 128), ('epochs', 60, 4), ('bs', 32, 16), ('limit', None, 480)))
    src = Path(a.data)
    if not (src/'images').is_dir(): sys.exit(f"{src}: expected a folder with images/ and masks/ in ISIC naming (the shared ISIC 2018 folder).")
    load0 = load1()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp); prepared = tmp/'prepared'
        m = prepare(src, prepared, size=a.size, limit=a.limit, progress=False)
        splits = {k: int(v) for k, v in m['split'].value_counts().items()}
        res = dict(benchmark='quality', command='python ' + ' '.join([sys.argv[0]] + sys.argv[1:]), device=dev.type,
                   data=f"{src.name}: {len(m)} images {splits}; trained on train (best epoch by valid Dice), scored on test "
                        "at the original 256x192", size=a.size, epochs=a.epochs, bs=a.bs, seed=a.seed, pretrained=False, models={})
        for arch in a.arch:
            t0 = time.time()
            s = train(prepared, arch=arch, epochs=a.epochs, bs=a.bs, lr=a.lr, out=tmp/arch, seed=a.seed, config=CONFIGS[arch],
                      pretrained=False, patience=None, resume=False, progress=False, device=dev)
            ev = evaluate(tmp/arch/'model.pth', prepared, out=None, split='test', progress=False)
            res['models'][arch] = dict(config=CONFIGS[arch], train_seconds=s['seconds'], train_images_per_s=s['images_per_s'],
                                       best_epoch=s['best_epoch'], n_train=s['n_train'], n_valid=s['n_valid'],
                                       test={k: (round(ev[k], 4) if isinstance(ev[k], float) else ev[k]) for k in KEYS},
                                       wall_seconds=round(time.time() - t0, 1))
            print(arch, json.dumps(res['models'][arch]), flush=True)
    res['machine'] = machine(gpu, load0)
    write_json(a.out or f'bench/results/quality_{dev.type}.json', res)
    print(json.dumps(res, indent=2))

if __name__ == '__main__': main()
