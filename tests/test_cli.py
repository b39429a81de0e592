"The `lesionseg` console command end to end, as a user runs it (a subprocess on the installed entry point)."
import os, subprocess, sys, json
from pathlib import Path
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent/'shared'/'data'/'isic2018-task1-train-256x192'
ENV = {**os.environ, 'HF_HUB_OFFLINE': '1'}

def run(*args, **kw):
    return subprocess.run(['lesionseg', *map(str, args)], capture_output=True, text=True, env={**ENV, **kw}, timeout=600)

def test_help_lists_commands():
    r = run('--help')
    assert r.returncode == 0, r.stderr
    for c in ('download', 'prepare', 'train', 'evaluate', 'predict', 'serve', 'demo'): assert c in r.stdout

def test_prepare_missing_source_is_a_clear_error(tmp_path):
    r = run('prepare', tmp_path/'nope', tmp_path/'out')
    assert r.returncode == 2
    assert str(tmp_path/'nope') in r.stderr and 'Traceback' not in r.stderr

def test_prepare_unpaired_image_names_the_file(tmp_path):
    import numpy as np, cv2
    src = tmp_path/'src'; (src/'images').mkdir(parents=True); (src/'masks').mkdir()
    cv2.imwrite(str(src/'images'/'ISIC_0000001.jpg'), np.full((32, 32, 3), 128, np.uint8))
    r = run('prepare', src, tmp_path/'out', '--size', 16, '--quiet')
    assert r.returncode == 2, r.stdout + r.stderr
    assert 'ISIC_0000001' in r.stderr and 'Traceback' not in r.stderr
    assert not (tmp_path/'out'/'manifest.csv').exists()

@pytest.mark.skipif(not SHARED.is_dir(), reason=f"the shared ISIC 2018 data is not at {SHARED}")
def test_prepare_shared_folder_gives_2098_pairs(tmp_path):
    out = tmp_path/'prep'
    r = run('prepare', SHARED, out, '--size', 64, '--quiet')
    assert r.returncode == 0, r.stderr
    m = pd.read_csv(out/'manifest.csv')
    assert len(m) == 2098 and m['id'].is_unique
    assert set(m['split']) <= {'train', 'valid', 'test'} and (m['split'] == 'train').mean() > 0.7
    assert (m[['orig_height', 'orig_width']].values == [192, 256]).all()
    assert (m[['height', 'width']].values == [64, 64]).all()
    assert m['lesion_frac'].between(0, 1).all() and m['lesion_frac'].mean() > 0.05
    ids = {p.stem for p in (SHARED/'images').glob('*.jpg')}
    assert set(m['id']) == ids
    assert len(list((out/'images').glob('*.png'))) == 2098 == len(list((out/'masks').glob('*.png')))
    # a second run finds the work done and keeps the same manifest
    r2 = run('prepare', SHARED, out, '--size', 64, '--quiet')
    assert r2.returncode == 0, r2.stderr
    pd.testing.assert_frame_equal(m, pd.read_csv(out/'manifest.csv'))

def test_demo_runs_on_a_fresh_workspace(tmp_path):
    "The main job, shortened: synthetic data, training, evaluation, MC Dropout and Grad-CAM, a figure and a JSON."
    r = run('demo', '--n', 20, '--size', 64, '--epochs', 1, '--mc', 3, '--quiet', LESIONSEG_ROOT=str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((tmp_path/'outputs'/'demo'/'demo.json').read_text())
    assert Path(res['figure']).stat().st_size > 1000 and Path(res['weights']).is_file()
    assert res['pairs'] == 20 and res['test']['n'] == res['splits']['test'] > 0
    assert all(0 <= res['test'][k] <= 1 for k in ('dice', 'iou', 'thresholded_jaccard', 'dice_pooled', 'iou_pooled'))
    assert res['shown'] and all(s['uncertainty_mean'] >= 0 for s in res['shown'])
    assert str(tmp_path) in r.stdout and 'Dice' in r.stdout
    # a second run reuses the finished training
    r2 = run('demo', '--n', 20, '--size', 64, '--epochs', 1, '--mc', 3, '--quiet', LESIONSEG_ROOT=str(tmp_path))
    assert r2.returncode == 0 and 'training finished earlier' in r2.stdout, r2.stdout + r2.stderr

TINY = {'swin-upernet': '{"decoder_channels": 32, "drop_path_rate": 0.0}', 'unet': '{"arch": "resnet18"}'}

def _train_eval(prepared, out, arch='swin-upernet'):
    "`lesionseg train` (2 epochs, a small model, no download) then `lesionseg evaluate` on the test split."
    r = run('train', '--data', prepared, '--arch', arch, '--epochs', 2, '--bs', 4, '--out', out,
            '--no-pretrained', '--config', TINY[arch], '--quiet')
    assert r.returncode == 0, r.stdout + r.stderr
    for f in ('model.pth', 'metrics.json', 'history.csv'): assert (out/f).exists(), f
    import torch
    meta = torch.load(out/'model.pth', weights_only=True) # self-describing, no pickled objects
    assert meta['arch'] == arch and 'state_dict' in meta
    assert set(meta['review_threshold']) == {'deterministic', 'mc'} # calibrated on the valid split when training ended
    r = run('evaluate', '--weights', out/'model.pth', '--data', prepared, '--out', out/'eval', '--quiet')
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((out/'eval'/'summary.json').read_text())
    for k in ('dice', 'iou', 'thresholded_jaccard', 'dice_pooled', 'iou_pooled', 'n'): assert k in s, k
    per = pd.read_csv(out/'eval'/'per_image.csv')
    assert len(per) == s['n'] == (pd.read_csv(prepared/'manifest.csv').split == 'test').sum()
    assert all(0 <= s[k] <= 1 for k in ('dice', 'iou', 'thresholded_jaccard', 'dice_pooled', 'iou_pooled'))
    return s

def _synthetic_prepared(tmp_path, n=40):
    from lesionseg.data import make_synthetic
    src = make_synthetic(tmp_path/'src', n=n, size=(72, 96), seed=1)
    assert run('prepare', src, tmp_path/'prep', '--size', 64, '--quiet').returncode == 0
    return tmp_path/'prep'

@pytest.mark.parametrize('arch', ['swin-upernet', 'unet'])
def test_train_then_evaluate_on_synthetic_lesions(tmp_path, arch):
    _train_eval(_synthetic_prepared(tmp_path), tmp_path/'run', arch)

@pytest.mark.skipif(not SHARED.is_dir(), reason=f"the shared ISIC 2018 data is not at {SHARED}")
def test_train_then_evaluate_on_real_images_at_original_resolution(tmp_path):
    from lesionseg.preprocessing import prepare
    prepare(SHARED, tmp_path/'prep', size=64, limit=48, progress=False)
    s = _train_eval(tmp_path/'prep', tmp_path/'run')
    per = pd.read_csv(tmp_path/'run'/'eval'/'per_image.csv')
    assert (per[['orig_height', 'orig_width']].values == [192, 256]).all() # scored at the original 256x192

def test_train_rejects_a_folder_that_is_not_prepared(tmp_path):
    r = run('train', '--data', tmp_path, '--arch', 'unet', '--epochs', 1, '--out', tmp_path/'run')
    assert r.returncode == 2 and 'manifest.csv' in r.stderr and 'Traceback' not in r.stderr

def test_evaluate_rejects_a_file_that_is_not_weights(tmp_path):
    bad = tmp_path/'model.pth'; bad.write_text('not a weights file')
    r = run('evaluate', '--weights', bad, '--data', _synthetic_prepared(tmp_path, n=8))
    assert r.returncode == 2 and str(bad) in r.stderr and 'Traceback' not in r.stderr

def test_train_under_accelerate_with_two_processes(tmp_path):
    "fastai's distributed training through `accelerate launch`: two CPU processes over gloo, process 0 writes the files."
    pytest.importorskip('accelerate')
    import shutil, torch
    prepared = _synthetic_prepared(tmp_path)
    cmd = ['accelerate', 'launch', '--multi_gpu', '--num_processes', '2', '--num_machines', '1', '--mixed_precision', 'no',
           '--dynamo_backend', 'no', shutil.which('lesionseg'), 'train', '--data', prepared, '--arch', 'swin-upernet', '--epochs', 2,
           '--bs', 4, '--out', tmp_path/'run', '--no-pretrained', '--config', TINY['swin-upernet'], '--quiet']
    r = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, env={**ENV, 'OMP_NUM_THREADS': '1'}, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((tmp_path/'run'/'metrics.json').read_text())
    assert s['processes'] == 2 and s['epochs'] == 2, s
    hist = pd.read_csv(tmp_path/'run'/'history.csv')
    assert list(hist.epoch) == [0, 1] # one writer: one header, one row an epoch
    n_train = (pd.read_csv(prepared/'manifest.csv').split == 'train').sum()
    assert s['n_train'] == n_train and s['images_per_s'] > 0
    assert r.stdout.count('swin-upernet trained') == 1 # rank 0 reports, rank 1 stays quiet
    import re, collections
    bests = collections.Counter(re.findall(r'Better model found at epoch (\d+) with dice value: ([\d.]+)', r.stdout + r.stderr))
    assert bests and set(bests.values()) == {2}, bests # both processes saw the same gathered validation Dice
    meta = torch.load(tmp_path/'run'/'model.pth', weights_only=True)
    assert not any(k.startswith('module.') for k in meta['state_dict']) # unwrapped from DistributedDataParallel

def test_train_with_the_tuned_recipe_then_evaluate_with_tta_and_postprocessing(tmp_path):
    from lesionseg.tuned import tuned_recipe
    import torch
    prep, out = _synthetic_prepared(tmp_path), tmp_path/'run'
    r = run('train', '--data', prep, '--epochs', 1, '--bs', 4, '--out', out, '--no-pretrained', '--config', TINY['swin-upernet'],
            '--recipe', 'tuned', '--quiet')
    assert r.returncode == 0, r.stdout + r.stderr
    assert torch.load(out/'model.pth', weights_only=True)['summary']['recipe'] == tuned_recipe()
    r = run('evaluate', '--weights', out/'model.pth', '--data', prep, '--out', out/'eval', '--tta', '--postprocess', '--quiet')
    assert r.returncode == 0, r.stdout + r.stderr
    s = json.loads((out/'eval'/'summary.json').read_text())
    assert s['tta'] is True and s['postprocess'] is True

def test_train_in_a_time_budget(tmp_path):
    "`--budget` (minutes) ends the fit by itself, after the training steps that fit, and says so in metrics.json."
    prep, out = _synthetic_prepared(tmp_path), tmp_path/'run'
    r = run('train', '--data', prep, '--budget', 0.1, '--bs', 4, '--out', out, '--no-pretrained', '--config', TINY['swin-upernet'],
            '--patience', 0, '--recipe', 'tuned', '--precision', 'bf16', '--quiet') # bf16 where the CPU has it, else fp32 with a warning
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads((out/'metrics.json').read_text())
    assert m['budget_seconds'] == 6.0 and m['recipe']['loss']['dice_weight'] == 2.0
    assert 1 <= m['epochs'] == len(pd.read_csv(out/'history.csv')) <= m['epochs_planned'] < 1000, m
    per_epoch = m['seconds']/m['epochs']
    assert m['seconds'] <= 6.0 + 2*per_epoch, m # the budget, plus at most one batch and one validation
    r = run('train', '--data', prep, '--budget', 0, '--out', tmp_path/'run0')
    assert r.returncode == 2 and '--budget 0' in r.stderr and 'Traceback' not in r.stderr

def test_train_rejects_a_bad_recipe(tmp_path):
    r = run('train', '--data', _synthetic_prepared(tmp_path, n=8), '--epochs', 1, '--out', tmp_path/'run', '--recipe', '{"aug": "heavy"}')
    assert r.returncode == 2 and '--recipe' in r.stderr and "'heavy'" in r.stderr and 'Traceback' not in r.stderr
    assert not (tmp_path/'run'/'model.pth').exists()

def test_serve_help_lists_its_settings():
    r = run('serve', '--help')
    assert r.returncode == 0, r.stderr
    for o in ('--max-bytes', '--max-pixels', '--max-mc', '--max-queue', '--concurrency', '--device', '--torch-threads'): assert o in r.stdout, o
