"""Is MC Dropout's uncertainty worth anything? Small models trained from scratch on the real ISIC images, then the held-out
split scored through `Segmenter.iter_maps` deterministic and with N MC Dropout samples (`lesionseg.uncertainty.uncertainty_study`):
per image Spearman(mean uncertainty, 1 - Dice), AUROC of the mean uncertainty for flagging failures (Jaccard < 0.65), pixel
expected calibration error with and without MC Dropout (bins kept for a reliability diagram), and the review threshold that
flags 90% of the failures. Models: UNet(ResNet-18), Swin-T+UPerNet with dropout before the classifier ('head', the default)
and on every FPN level ('fpn', the earlier design). Runs unchanged on a GPU.

usage: python bench/uncertainty_quality.py [--size 128] [--limit 600] [--epochs 4] [--mc 20] [--models unet-r18,swin-head,swin-fpn]
writes bench/results/uncertainty_quality_<cpu|cuda>.json
"""
import argparse, json, os, sys, tempfile, time
from pathlib import Path
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import warnings; warnings.filterwarnings('ignore', message='.*torch.jit.script.*')
import numpy as np, torch
from lesionseg.preprocessing import prepare
from lesionseg.learner import train
from lesionseg.inference import Segmenter
from lesionseg.upernet import tiny_config
from lesionseg.uncertainty import uncertainty_study, study_table, ece, review_threshold_for

MODELS = {  # name: (arch, config)
    'unet-r18': ('unet', {'arch': 'resnet18'}),
    'swin-head': ('swin-upernet', {}),  # the default: one Dropout2d before the classifier
    'swin-fpn': ('swin-upernet', {'dropout_at': 'fpn'}),  # the earlier design: a Dropout2d on every pyramid level too
}
DATA = Path(__file__).resolve().parents[2]/'shared'/'data'/'isic2018-task1-train-256x192'

def _r(v, d=4): return None if v is None or (isinstance(v, float) and np.isnan(v)) else round(float(v), d)

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--data', default=str(DATA if DATA.exists() else '/work/shared/data/isic2018-task1-train-256x192'))
    ap.add_argument('--size', type=int, default=128)
    ap.add_argument('--limit', type=int, default=600, help='first N pairs of the data')
    ap.add_argument('--valid-pct', type=float, default=0.1)
    ap.add_argument('--test-pct', type=float, default=0.25, help='held out; a larger share than usual: failures must be counted')
    ap.add_argument('--epochs', type=int, default=4)
    ap.add_argument('--bs', type=int, default=16)
    ap.add_argument('--mc', type=int, default=20)
    ap.add_argument('--seed', type=int, default=42)
    ap.add_argument('--recall', type=float, default=0.9, help='share of failures the review threshold must flag')
    ap.add_argument('--models', default=','.join(MODELS))
    ap.add_argument('--tiny', action='store_true', help="Swin models with lesson 03's tiny_config decoder (width 32): for a busy CPU")
    ap.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    ap.add_argument('--out', default=None, help='default: bench/results/uncertainty_quality_<device type>.json')
    a = ap.parse_args()
    dev = torch.device(a.device)
    if not Path(a.data).exists(): sys.exit(f'{a.data}: no such folder; expected the ISIC images (images/ and masks/).')
    out = Path(a.out or Path(__file__).parent/'results'/f'uncertainty_quality_{dev.type}.json')
    res = {}
    with tempfile.TemporaryDirectory() as td:
        td = Path(td); data = td/f'isic{a.size}'
        man = prepare(a.data, data, size=a.size, limit=a.limit, progress=False, valid_pct=a.valid_pct, test_pct=a.test_pct)
        splits = man.split.value_counts().to_dict()
        print(f'prepared {len(man)} pairs at {a.size}: {splits}', flush=True)
        for name in a.models.split(','):
            arch, cfg = MODELS[name]
            if a.tiny and arch == 'swin-upernet': cfg = {**tiny_config, **cfg}
            t0 = time.time()
            summ = train(data, arch, epochs=a.epochs, bs=a.bs, out=td/name, seed=a.seed, config=cfg, pretrained=False,
                         progress=False, device=a.device, patience=None)
            t_train = time.time() - t0
            seg = Segmenter.from_file(td/name/"model.pth", device=a.device)
            t0 = time.time()
            df, bins = uncertainty_study(seg, data, 'test', mc=a.mc)
            t_score = time.time() - t0
            tab = study_table(df)
            fail = df.jaccard_mc < 0.65
            thr = {col: review_threshold_for(df[col], df[j], recall=a.recall) for col, j in
                   (('entropy_det', 'jaccard'), ('entropy', 'jaccard_mc'), ('mutual_info', 'jaccard_mc'), ('std', 'jaccard_mc'))}
            flagged = {col: _r(np.mean(df[col] > t), 3) for col, t in thr.items()}
            res[name] = dict(
                arch=arch, config=seg.model.config, train_seconds=round(t_train, 1), score_seconds=round(t_score, 1),
                n_test=len(df), failures_det=int((df.jaccard < 0.65).sum()), failures_mc=int(fail.sum()),
                dice_det=_r(df.dice.mean()), dice_mc=_r(df.dice_mc.mean()),
                thresholded_jaccard_det=_r(np.where(df.jaccard < 0.65, 0, df.jaccard).mean()),
                thresholded_jaccard_mc=_r(np.where(df.jaccard_mc < 0.65, 0, df.jaccard_mc).mean()),
                ece={k: _r(ece(b)) for k, b in bins.items()},
                uncertainty={col: {k: _r(v) for k, v in row.items()} for col, row in tab.to_dict('index').items()},
                review_threshold={col: _r(t, 5) for col, t in thr.items()}, flagged_share=flagged,
                calibration_bins={k: np.asarray(b).tolist() for k, b in bins.items()},
                per_image=df.round(5).reset_index().to_dict('list'),
                train_summary={k: summ.get(k) for k in ('best_epoch', 'valid', 'n_train', 'n_valid') if k in summ})
            print(f"{name}: trained {t_train:.0f} s, scored {t_score:.0f} s; {len(df)} test images, Dice {df.dice.mean():.3f} det / "
                  f"{df.dice_mc.mean():.3f} MC, failures {int(fail.sum())}; ECE {res[name]['ece']}", flush=True)
            print(tab.round(3).to_string(), flush=True)
            print('review thresholds (recall', a.recall, '):', res[name]['review_threshold'], 'flagged', flagged, flush=True)
    info = dict(benchmark='uncertainty_quality', command='python ' + ' '.join(sys.argv), device=str(dev),
                torch=torch.__version__, threads=torch.get_num_threads(), loadavg=os.getloadavg(),
                data=f'{Path(a.data).name}: first {a.limit} pairs, prepared at {a.size}x{a.size}, splits {splits}; '
                     f'trained on train, scored on test at the prepared size',
                setup=dict(tiny=a.tiny, size=a.size, epochs=a.epochs, bs=a.bs, seed=a.seed, pretrained=False, mc=a.mc, fail_below=0.65,
                           review_recall=a.recall, ece_bins=15, patience=None),
                notes='uncertainty columns: entropy_det = mean predictive entropy of the deterministic pass (what predict(mc=0) '
                      'reports); std, entropy, mutual_info from the MC samples. Spearman is against 1 - Dice, AUROC flags '
                      'Jaccard < 0.65, of the matching prediction.',
                results=res)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix('.json.tmp'); tmp.write_text(json.dumps(info, indent=1)); tmp.replace(out)
    print('wrote', out)

if __name__ == '__main__': main()
