"""`lesionseg.evaluate` outside the lesson: the ISIC submission export scored by the challenge's own scorer
(`isic-challenge-scoring`, a test-only dependency) on synthetic and real ISIC images, and bad input."""
import os, re
from pathlib import Path
import numpy as np, pandas as pd, pytest, cv2, torch
from PIL import Image

os.environ.setdefault('HF_HUB_OFFLINE', '1')
from lesionseg.data import make_synthetic
from lesionseg.preprocessing import prepare, split_by_hash, read_mask, binarize_mask
from lesionseg.upernet import SwinUPerNet, tiny_config
from lesionseg.weights import save_weights
from lesionseg.inference import Segmenter
from lesionseg.metrics import score_images
from lesionseg.evaluate import evaluate, export_isic, submission_name

SegmentationScore = pytest.importorskip('isic_challenge_scoring.segmentation',
                                        reason='isic-challenge-scoring (the oracle) is not installed').SegmentationScore

def _find_shared(name='isic2018-task1-train-256x192'):
    for p in (Path(__file__).resolve().parent, *Path(__file__).resolve().parents):
        if (q := p/'shared'/'data'/name).is_dir(): return q

REAL = _find_shared()
ISIC_KEYS = dict(accuracy='accuracy', sensitivity='sensitivity', specificity='specificity', jaccard='iou',
                 threshold_jaccard='thresholded_jaccard', dice='dice') # scorer's name -> evaluate's summary key

@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    torch.manual_seed(0)
    return save_weights(tmp_path_factory.mktemp('w')/'tiny.pth', SwinUPerNet(**tiny_config), 'swin-upernet', 64)

@pytest.fixture(scope='module')
def synth(tmp_path_factory):
    d = tmp_path_factory.mktemp('syn')
    src = make_synthetic(d/'src', n=8, size=(72, 100), seed=3)
    prepare(src, d/'prep', size=64, valid_pct=0.2, test_pct=0.5, progress=False)
    return d/'prep'

def _truth_dir(data:Path, split:str, out:Path) -> Path:
    "The original masks of `split`, written in the challenge's ground-truth layout (ISIC_<7 digits>_segmentation.png, 0/255)."
    out.mkdir()
    man = pd.read_csv(data/'manifest.csv', dtype={'id': str})
    for r in man[man.split == split].itertuples():
        num = re.search(r'\d{7}', r.id).group(0)
        cv2.imwrite(str(out/f'ISIC_{num}_segmentation.png'), binarize_mask(read_mask(r.src_mask), r.src_mask))
    return out

def _official(truth:Path, pred:Path) -> pd.Series: return SegmentationScore.from_dir(truth, pred).macro_average

def _check_equal(data, weights, tmp_path, split='test'):
    summ = evaluate(weights, data, out=tmp_path/'eval', split=split, progress=False, device='cpu')
    sub = export_isic(weights, data, tmp_path/'sub', split=split, progress=False, device='cpu')
    official = _official(_truth_dir(data, split, tmp_path/'truth'), tmp_path/'sub')
    assert len(sub) == summ['n'] > 0
    for theirs, ours in ISIC_KEYS.items(): assert official[theirs] == pytest.approx(summ[ours], abs=1e-9), theirs
    return summ, sub, official

def test_export_scored_by_isic_synthetic(synth, weights, tmp_path):
    summ, sub, _ = _check_equal(synth, weights, tmp_path)
    man = pd.read_csv(synth/'manifest.csv', dtype={'id': str}).set_index('id')
    for r in sub.itertuples():
        assert Path(r.file).name == submission_name(r.id) == f'ISIC_{r.id}_segmentation.png'
        with Image.open(r.file) as im: assert (im.mode, im.size) == ('L', (man.orig_width[r.id], man.orig_height[r.id]))
        assert set(np.unique(cv2.imread(r.file, cv2.IMREAD_UNCHANGED))) <= {0, 255}
    assert sorted(os.listdir(tmp_path/'sub')) == sorted(Path(f).name for f in sub.file) # no temporary file left

def test_export_options_scored_by_isic(synth, weights, tmp_path):
    "TTA, MC Dropout and post-processing: the scorer's numbers equal lesionseg.metrics on the same exported masks."
    torch.manual_seed(0)
    sub = export_isic(weights, synth, tmp_path/'sub', tta=True, mc=2, postprocess=True, threshold=0.4, progress=False, device='cpu')
    official = _official(_truth_dir(synth, 'test', tmp_path/'truth'), tmp_path/'sub')
    man = pd.read_csv(synth/'manifest.csv', dtype={'id': str}).set_index('id')
    truths = [read_mask(man.src_mask[i]) for i in sub.id]
    preds = [cv2.imread(f, cv2.IMREAD_GRAYSCALE) > 128 for f in sub.file]
    for p in preds: # post-processed: at most one 8-connected component
        assert cv2.connectedComponents(p.astype(np.uint8), connectivity=8)[0] <= 2
    ours = score_images(truths, preds, ids=list(sub.id)).mean(numeric_only=True)
    for theirs, k in dict(ISIC_KEYS, jaccard='jaccard').items(): assert official[theirs] == pytest.approx(ours[k], abs=1e-9), theirs
    # deterministic options: the file is the Segmenter's own answer for that image
    sub2 = export_isic(Segmenter.from_file(weights, device='cpu'), synth, tmp_path/'sub2', tta=True, postprocess=True, progress=False)
    seg = Segmenter.from_file(weights, device='cpu')
    for r in sub2.itertuples():
        exp = seg.predict(synth/man.image[r.id], out_size=(r.orig_height, r.orig_width), tta=True, postprocess=True)['mask']
        got = cv2.imread(r.file, cv2.IMREAD_UNCHANGED) > 0
        assert (got != exp.astype(bool)).mean() < 1e-3 # the same up to float rounding at the threshold

@pytest.mark.skipif(REAL is None, reason='shared/data/isic2018-task1-train-256x192 not found (only on the project machines and CI)')
def test_export_scored_by_isic_real(weights, tmp_path):
    ids = sorted(p.stem for p in (REAL/'images').glob('ISIC_*.jpg'))
    test_ids = [i for i in ids if split_by_hash(i) == 'test'][:6]
    prepare(REAL, tmp_path/'prep', size=64, ids=test_ids, progress=False)
    summ, sub, official = _check_equal(tmp_path/'prep', weights, tmp_path)
    assert summ['n'] == 6 and sorted(Path(f).name for f in sub.file) == [f'{i}_segmentation.png' for i in test_ids]
    with Image.open(sub.file[0]) as im: assert im.size == (256, 192)

def test_bad_output_paths(synth, weights, tmp_path):
    (tmp_path/'file').write_text('x')
    with pytest.raises(FileExistsError, match='file: exists and is not a folder'): export_isic(weights, synth, tmp_path/'file', progress=False)
    with pytest.raises(FileExistsError, match='file: exists and is not a folder'): evaluate(weights, synth, out=tmp_path/'file', progress=False)
    with pytest.raises(PermissionError, match='cannot create the output folder'): export_isic(weights, synth, tmp_path/'file'/'sub', progress=False)
    assert (tmp_path/'file').read_text() == 'x'

@pytest.mark.skipif(hasattr(os, 'geteuid') and os.geteuid() == 0, reason='root writes into read-only folders')
def test_unwritable_folder(synth, weights, tmp_path):
    ro = tmp_path/'ro'; ro.mkdir(); ro.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match='cannot write into the output folder'): export_isic(weights, synth, ro, progress=False)
    finally: ro.chmod(0o755)

def test_write_failure_leaves_no_partial_file(synth, weights, tmp_path, monkeypatch):
    "A failure while writing a PNG (disk full) leaves neither a half file nor a temporary one."
    import lesionseg.evaluate as ev
    real_replace, calls = os.replace, []
    def flaky(a, b):
        calls.append(b)
        if len(calls) == 2: raise OSError(28, 'No space left on device')
        return real_replace(a, b)
    monkeypatch.setattr(ev.os, 'replace', flaky)
    with pytest.raises(OSError, match='No space left'): export_isic(weights, synth, tmp_path/'sub', progress=False)
    assert sorted(os.listdir(tmp_path/'sub')) == [Path(calls[0]).name] # the first file, whole; nothing else

def test_bad_data(synth, weights, tmp_path):
    empty = tmp_path/'empty'; empty.mkdir()
    with pytest.raises(FileNotFoundError, match='manifest.csv: no manifest'): export_isic(weights, empty, tmp_path/'o', progress=False)
    with pytest.raises(FileNotFoundError, match='manifest.csv: no manifest'): evaluate(weights, empty, progress=False)
    assert not (tmp_path/'o').exists() # nothing created before the input was checked
    with pytest.raises(ValueError, match="no images in split 'tst'; the splits present are"):
        export_isic(weights, synth, tmp_path/'o', split='tst', progress=False)
    with pytest.raises(ValueError, match='threshold=0'): export_isic(weights, synth, tmp_path/'o', threshold=0, progress=False)
    with pytest.raises(ValueError, match='mc=-1'): export_isic(weights, synth, tmp_path/'o', mc=-1, progress=False)
