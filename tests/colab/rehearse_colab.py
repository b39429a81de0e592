"""The course rehearsed as a student runs it in Colab: `pytest tests/colab/rehearse_colab.py`.

Each lesson runs in a virtual environment with Colab's package versions (`colab_env.py`, from
`../shared/colab/`'s published freeze; this machine's torch and Python 3.11, since torch's wheels are
local for 3.11 only), with no nbdev and no `../shared` above its working directory, and with a
stand-in `google.colab.drive` that mounts a temporary folder as Drive. Lesson 00's first cell installs
lesionseg from this checkout, as it installs it from GitHub in Colab. Two kinds of rehearsal:

- `test_course_as_a_student`: lessons 00 -> 06 in course order at their real settings, scaled only
  through the settings cells a student edits (`--set`), on official-layout ISIC 2018 archives built from
  the shared real images and served on loopback: download to Drive, a first model on the validation
  images, prepare, train the UNet (killed at its first checkpoint, as a disconnect would, then resumed),
  the Swin-T + UPerNet and the tuned recipe, study them, score them, serve one.
- `test_lesson_under_test_flag`: every lesson in its test mode (`IN_TEST=1`; two at a time), in Colab's versions plus
  the test-only oracle `isic-challenge-scoring` (which Colab lacks: a student's lessons skip its checks, saying so).

Colab's own packages must come out of it unchanged: installing lesionseg may add, never change.
"""
from __future__ import annotations
import json, os, re, subprocess, sys
from pathlib import Path
import pytest

HERE = Path(__file__).absolute().parent
REPO = HERE.parents[1]
SHARED = REPO.parent/'shared'
NBS = sorted(p.name for p in (REPO/'nbs').glob('[0-9]*.ipynb'))
sys.path.insert(0, str(HERE))
from colab_env import build, freeze, dev_requirement
from stand_ins import official_archives, serve_folder, REAL
from lesionseg.preprocessing import ISIC2018_SPLITS

pytestmark = pytest.mark.skipif(not (SHARED/'colab'/'pip-freeze.gpu.txt').exists() or not REAL.is_dir(),
                                reason=f"needs {SHARED}/colab (Colab's freeze) and {REAL} (the real images)")

# the student's edits of the settings cells, for a 2-core CPU: small images, a small encoder, no download
# of ImageNet weights (unreachable here; in Colab PRETRAINED stays True), a few epochs
SCALE = {
    '00_setup.ipynb': "ROOT = None",
    '01_preprocessing.ipynb': "SIZE, FIRST_EPOCHS, PRETRAINED = 64, 1, False",
    '02_unet.ipynb': "SIZE, ENCODER, PRETRAINED, EPOCHS, BS = 64, 'resnet18', False, 3, 8",
    '03_swin_upernet.ipynb': "SIZE, PRETRAINED, EPOCHS, BS = 64, False, 2, 8\n"
                             "CONFIG = dict(decoder_channels=64, drop_path_rate=0.0)",
    '04_tuned.ipynb': "SIZE, PRETRAINED, EPOCHS, BS = 64, False, 2, 8\n"
                      "CONFIG = dict(decoder_channels=64, drop_path_rate=0.0)\n"
                      "ABLATION_ROWS, ABLATION_EPOCHS = ['baseline', 'postprocess', 'tuned'], 1",
    '04a_mc_dropout.ipynb': "SIZE, MC, N_SHOW, BS = 64, 4, 3, 8",
    '04b_gradcam.ipynb': "SIZE, N_SHOW, N_CHECK = 64, 3, 6",
    '05_evaluate.ipynb': "SIZE, BS, N_WORST, MC = 64, 8, 2, 4",
    '06_serve.ipynb': "SIZE, MC = 64, 4",
}
ORACLES = ['isic-challenge-scoring'] # test-only checks that the lessons skip, with a note, where it is absent (Colab)

N_IDS = dict(train=48, valid=12, test=12) # disjoint real images per official split

@pytest.fixture(scope='session')
def colab_python():
    "Colab's versions in `.colab-venv` (built once, reused), without lesionseg: lesson 00 installs it."
    venv = build(REPO/'.colab-venv')
    py = str(venv/'bin'/'python')
    subprocess.run([py, '-m', 'pip', 'uninstall', '-y', '-q', 'lesionseg', *ORACLES], capture_output=True)
    return py

@pytest.fixture(scope='session')
def with_oracles(colab_python):
    "The test mode's reference implementations, which Colab lacks (development requirements, like on any test machine)."
    subprocess.run([colab_python, '-m', 'pip', 'install', '-q', *[dev_requirement(n) for n in ORACLES]], check=True)
    return colab_python

@pytest.fixture(scope='session')
def colab_freeze(colab_python): return freeze(Path(colab_python).parents[1])

@pytest.fixture(scope='session')
def isic_url(tmp_path_factory):
    "A loopback HTTP server of the stand-in archives; yields their base URL."
    with serve_folder(official_archives(tmp_path_factory.mktemp('bucket'), N_IDS)) as url: yield url

@pytest.fixture(scope='session')
def colab_mount():
    "Colab's /content/drive mount point, free for the stand-in (restored afterwards)."
    mp = Path('/content/drive')
    if mp.exists() and not mp.is_symlink(): pytest.skip(f'{mp} exists: this machine looks like Colab itself')
    had_parent = mp.parent.exists()
    yield mp
    if mp.is_symlink(): mp.unlink()
    if not had_parent and mp.parent.is_dir() and not any(mp.parent.iterdir()): mp.parent.rmdir() # leave no empty /content behind

def run(py, nb, tmp, drive, overrides=None, test_flags=False, kill_when=None, cpus=None):
    out = tmp/f'{Path(nb).stem}.executed.ipynb'
    cmd = [py, str(HERE/'run_lesson.py'), str(REPO/'nbs'/nb), '--out', str(out), '--content', str(tmp/'content'),
           '--drive', str(drive)]
    if overrides: cmd += ['--set', overrides]
    if test_flags: cmd.append('--test-flags')
    if kill_when: cmd += ['--kill-when', str(kill_when)]
    p = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    return p.returncode, p.stdout + p.stderr, out

def outputs(nb_path:Path) -> str:
    "All text the executed lesson showed (stdout, results, errors)."
    nb, parts = json.loads(nb_path.read_text()), []
    for c in nb['cells']:
        for o in c.get('outputs', []):
            parts.append(''.join(o.get('text', '')) + ''.join(o.get('data', {}).get('text/plain', '')) + ''.join(o.get('traceback', [])))
    return '\n'.join(parts)

def n_images(nb_path:Path) -> int:
    return sum('image/png' in o.get('data', {}) for c in json.loads(nb_path.read_text())['cells'] for o in c.get('outputs', []))

def changed(before:dict, after:dict) -> dict:
    "Packages whose version changed or that disappeared."
    return {k: (v, after.get(k)) for k, v in before.items() if after.get(k) != v and k != 'lesionseg'}

@pytest.mark.timeout(2400) # the whole course in one test: about 10 minutes on 2 quiet cores, the venv build included
def test_course_as_a_student(colab_python, colab_freeze, isic_url, colab_mount, tmp_path):
    drive, ws = tmp_path/'drive', tmp_path/'drive'/'MyDrive'/'lesionseg'
    scale = dict(SCALE, **{'01_preprocessing.ipynb': SCALE['01_preprocessing.ipynb'] + f"\nISIC_URL = {isic_url!r}"})
    rc, log, out = run(colab_python, '00_setup.ipynb', tmp_path, drive, scale['00_setup.ipynb'])
    assert rc == 0, log
    assert 'Mounted at /content/drive' in outputs(out) and ws.is_dir(), outputs(out)[-3000:]
    after = freeze(Path(colab_python).parents[1])
    assert 'lesionseg' in after and not changed(colab_freeze, after), changed(colab_freeze, after)
    assert 'nbdev' not in after # Colab has none, and the course must not need it

    rc, log, out = run(colab_python, '01_preprocessing.ipynb', tmp_path, drive, scale['01_preprocessing.ipynb'])
    assert rc == 0, log
    assert sorted(p.name for p in (ws/'data'/'isic2018').glob('*.zip')) == sorted(f'{n}.zip' for s in ('train', 'valid', 'test')
        for n in ISIC2018_SPLITS[s])
    import pandas as pd
    man = pd.read_csv(ws/'cache'/'isic2018-64'/'manifest.csv')
    assert man.split.value_counts().to_dict() == N_IDS
    assert n_images(out) >= 2 and 'held-out validation images: Dice' in outputs(out) # the first model; the strip of real pairs

    # 02: a disconnect during training (the kernel killed at the first checkpoint), then the lesson run again
    ck = ws/'models'/'unet'/'checkpoint.pth'
    rc, log, _ = run(colab_python, '02_unet.ipynb', tmp_path, drive, scale['02_unet.ipynb'], kill_when=ck)
    assert rc == 3 and ck.exists() and not (ws/'models'/'unet'/'metrics.json').exists(), log
    rc, log, out = run(colab_python, '02_unet.ipynb', tmp_path, drive, scale['02_unet.ipynb'])
    assert rc == 0, log
    m = json.loads((ws/'models'/'unet'/'metrics.json').read_text())
    assert m['resumed_from'] and m['epochs'] == 3, m
    text = outputs(out)
    assert 'test split (12 images): per-image Dice' in text, text[-3000:]
    assert n_images(out) >= 1 # show_results: real test images with the expert's and the model's masks
    assert (ws/'models'/'unet'/'model.pth').exists() and (ws/'outputs'/'02_unet-test-results.png').exists()

    rc, log, out = run(colab_python, '03_swin_upernet.ipynb', tmp_path, drive, scale['03_swin_upernet.ipynb'])
    assert rc == 0, log
    assert (ws/'models'/'swin-upernet'/'model.pth').exists() and (ws/'outputs'/'03_swin_upernet-test-results.png').exists()
    assert n_images(out) >= 1
    text = outputs(out)
    assert re.search(r'^swin-upernet +0\.\d+', text, re.M) and re.search(r'^unet +0\.\d+', text, re.M), text[-3000:] # the table

    rc, log, out = run(colab_python, '04_tuned.ipynb', tmp_path, drive, scale['04_tuned.ipynb'])
    assert rc == 0, log
    tuned = json.loads((ws/'models'/'tuned'/'metrics.json').read_text())
    assert tuned['recipe']['postprocess'] and tuned['epochs'] == 2, tuned
    table = pd.read_csv(ws/'outputs'/'04_tuned'/'test-table.csv', index_col=0)
    assert list(table.index) == ['tuned', 'swin-upernet', 'unet'] and (table.n == N_IDS['test']).all(), table
    assert (ws/'outputs'/'04_tuned-changes.png').exists() and n_images(out) >= 1
    abl = json.loads((ws/'models'/'ablation'/'ablation.json').read_text())
    assert list(abl['variants']) == ['baseline', 'postprocess', 'tuned'] and abl['selection']['metric'] == 'valid per-image dice'

    # 04a, 04b: MC Dropout and Grad-CAM on the tuned model, on real test images
    for nb, figs in (('04a_mc_dropout.ipynb', ['04a_mc_dropout-uncertainty.png', '04a_mc_dropout-calibration.png']),
                     ('04b_gradcam.ipynb', ['04b_gradcam-test-layers.png'])):
        rc, log, out = run(colab_python, nb, tmp_path, drive, scale[nb])
        assert rc == 0, log
        assert all((ws/'outputs'/f).stat().st_size > 0 for f in figs) and n_images(out) >= len(figs), nb

    # 05: the three models on the official validation and test splits, at the original resolution; re-run: read back
    for again in (False, True):
        rc, log, out = run(colab_python, '05_evaluate.ipynb', tmp_path, drive, scale['05_evaluate.ipynb'])
        assert rc == 0, log
    ev = ws/'outputs'/'05_evaluate'
    for name in ('unet', 'swin-upernet', 'tuned'):
        for split in ('valid', 'test'):
            s = json.loads((ev/name/split/'summary.json').read_text())
            assert s['n'] == N_IDS[split] and 0 <= s['dice'] <= 1, s
    assert 'scored earlier' in outputs(out) # the second run read the scores back
    assert (ev/'table.csv').exists() and (ws/'outputs'/'05_evaluate-worst.png').exists()
    subs = list((ev/'isic-submission').glob('*/test/*_segmentation.png'))
    assert len(subs) == N_IDS['test'], subs

    # 06: the trained model behind the service, called with an original test image
    rc, log, out = run(colab_python, '06_serve.ipynb', tmp_path, drive, scale['06_serve.ipynb'])
    assert rc == 0, log
    assert (ws/'outputs'/'06_serve-answer.png').stat().st_size > 0 and 'lesionseg serve --weights' in outputs(out)
    assert not changed(colab_freeze, freeze(Path(colab_python).parents[1]))

@pytest.fixture(scope='session')
def test_flag_runs(with_oracles, colab_mount, on_half_cores, tmp_path_factory):
    "Every lesson in its test mode, once per session: two kernels at a time, each on half of the cores (torch and the service follow)."
    tmp = tmp_path_factory.mktemp('test-flags')
    def one(nb, cpus):
        d = tmp/Path(nb).stem; d.mkdir()
        return run(with_oracles, nb, d, d/'drive', test_flags=True, cpus=cpus)[:2]
    return dict(zip(NBS, on_half_cores(one, NBS)))

@pytest.mark.parametrize('nb', NBS)
def test_lesson_under_test_flag(test_flag_runs, nb):
    rc, log = test_flag_runs[nb]
    assert rc == 0, log[-6000:]
