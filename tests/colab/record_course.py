"""Record the lessons' outputs from a real run: what the docs site shows. `python tests/colab/record_course.py`

Runs lessons 00 -> 07 in course order as a person in Colab would (`run_lesson.py`: Colab's package
versions from `.colab-venv`, a stand-in Drive, the install from this checkout), on official-layout ISIC
2018 archives made from the shared real images (`stand_ins.py`) and served on loopback, at the scale a
2-core CPU allows (`DOCS_SCALE`: the student's own edits of each settings cell, from scratch since no
ImageNet weights can be downloaded here). Then, with `--write`, each lesson's outputs go back into
`nbs/` (cell by cell, by cell id; the injected settings cell itself is not kept), and a note after the
settings cell says which settings produced them. Commit after `nbdev_clean`.

A rerun reuses the workspace in `--work` (downloads, caches, trained models, scores): like a student,
it resumes. Delete the folder to record from zero.
"""
from __future__ import annotations
import argparse, subprocess, sys, time
from pathlib import Path

HERE = Path(__file__).absolute().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
from colab_env import build
from stand_ins import official_archives, serve_folder

# the real images per official split (disjoint): 400 to train on, the official validation set's 100, 200 to test;
# with the epochs below, most of an hour on 2 quiet cores (lesson 02's UNet took 2.4 minutes an epoch there)
DOCS_IDS = dict(train=400, valid=100, test=200)
DOCS_SCALE = {
    '00_setup.ipynb': "",
    '01_preprocessing.ipynb': "SIZE, FIRST_EPOCHS, PRETRAINED = 128, 4, False",
    '02_unet.ipynb': "SIZE, PRETRAINED, EPOCHS, BS = 128, False, 6, 16",
    '03_swin_upernet.ipynb': "SIZE, PRETRAINED, EPOCHS, BS = 128, False, 6, 16\nCONFIG = dict(decoder_channels=128)",
    '04_tuned.ipynb': "SIZE, PRETRAINED, EPOCHS, BS = 128, False, 8, 16\nCONFIG = dict(decoder_channels=128)\n"
                      "ABLATION_ROWS, ABLATION_EPOCHS = ['baseline', 'postprocess', 'tta'], 2",
    '04a_mc_dropout.ipynb': "SIZE = 128",
    '04b_gradcam.ipynb': "SIZE = 128",
    '05_evaluate.ipynb': "SIZE = 128",
    '06_serve.ipynb': "SIZE = 128",
}
# the lessons without a settings cell: they teach one part of the library on synthetic lesions and, where the
# shared copy of ISIC 2018 is above the working folder (here; never in Colab), on real images; run as they are
LIBRARY = ['00a_helpers.ipynb', '01a_data.ipynb', '01b_metrics.ipynb', '01c_weights.ipynb', '01d_callbacks.ipynb', '01e_learner.ipynb',
           '03a_mc.ipynb', '03b_inference.ipynb', '03c_viz.ipynb',
           '05a_predict.ipynb', '05b_demo.ipynb', '07_cli.ipynb']
USES_SHARED = {'01a_data.ipynb', '01b_metrics.ipynb', '01e_learner.ipynb', '03b_inference.ipynb'} # sections on the shared real images
ORDER = sorted([*DOCS_SCALE, *LIBRARY]) # course order is name order
NOTE = '**The outputs on this page**'

def note(overrides:str, n_ids:dict, trains:bool=True, library:bool=False) -> str:
    "The markdown cell that says which run the committed outputs come from."
    where = ("in a Colab-like environment on a 2-core CPU without a GPU (Colab's package versions, a stand-in Drive at "
             "/content/drive)")
    if library: return (f"> {NOTE} come from running this lesson as it is, as a student would, {where}"
                        + ("; its sections on real images found the shared 256 x 192 copy of the ISIC 2018 training images beside "
                           "that machine's checkout (in Colab they say so and skip)" if library == 'shared' else '')
                        + ". `tests/colab/record_course.py` made them.")
    if not trains: return f"> {NOTE} come from running this lesson as a student would in Colab, {where}; `tests/colab/record_course.py` made them."
    settings = f"with the settings above changed to `{'; '.join(overrides.splitlines())}`" if overrides else "with the settings above"
    data = (f"{n_ids['train']} training, {n_ids['valid']} validation and {n_ids['test']} test images of ISIC 2018 (256 x 192 copies "
            "of the challenge's training images, served as its official archives)")
    return (f"> {NOTE} come from running this lesson as a student would, {where}, {settings}, on {data}. Every model there "
            "was trained from scratch, since no ImageNet weights can be downloaded on that machine: on a GPU with the settings "
            "above, your numbers will differ. `tests/colab/record_course.py` made them.")

def write_back(executed:Path, source:Path, overrides:str, n_ids:dict):
    "Copy `executed`'s outputs into `source` by cell id, and put the note after the parameters cell."
    import nbformat
    ran = {c.get('id'): c for c in nbformat.read(executed, as_version=4).cells}
    nb = nbformat.read(source, as_version=4)
    cells = [c for c in nb.cells if not (c.cell_type == 'markdown' and c.source.startswith(f'> {NOTE}'))]
    for c in cells:
        if c.cell_type == 'code':
            r = ran.get(c.get('id'))
            c.outputs = r.outputs if r is not None else []
            c.execution_count = None
    library = ('shared' if source.name in USES_SHARED else True) if source.name in LIBRARY else False
    at = (lambda c: 'colab-badge' in c.source) if library else (lambda c: 'parameters' in c.get('metadata', {}).get('tags', []))
    i = next(i for i, c in enumerate(cells) if at(c))
    cells.insert(i + 1, nbformat.v4.new_markdown_cell(note(overrides, n_ids, trains=not source.name.startswith('00_'), library=library)))
    nb.cells = cells
    tmp = source.with_suffix('.tmp.ipynb'); nbformat.write(nb, tmp); tmp.replace(source)

def run_one(py, nb, work:Path, url:str, write:bool):
    "Run lesson `nb` as a student with its DOCS_SCALE edits (the archives from `url`); write its outputs back if `write`."
    over = DOCS_SCALE.get(nb, '') + (f"\nISIC_URL = {url!r}" if nb.startswith('01_') else '')
    out, t0 = work/f'{Path(nb).stem}.executed.ipynb', time.time()
    cmd = [py, str(HERE/'run_lesson.py'), str(REPO/'nbs'/nb), '--out', str(out), '--content', str(work/'content'),
           '--drive', str(work/'drive')] + (['--set', over] if over else [])
    rc = subprocess.run(cmd).returncode
    print(f'{nb}: rc {rc} in {time.time() - t0:.0f} s', flush=True)
    if rc: raise SystemExit(f'{nb} failed: see {out}')
    if write: write_back(out, REPO/'nbs'/nb, DOCS_SCALE.get(nb, ''), DOCS_IDS)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--work', default=str(REPO/'.record'), help='the run\'s folder: the stand-in Drive, /content, executed lessons')
    ap.add_argument('--only', nargs='*', help='only these lessons (names as in nbs/), in course order')
    ap.add_argument('--write', action='store_true', help="write the outputs back into nbs/")
    ap.add_argument('--no-run', action='store_true', help="only write back the lessons executed earlier in --work")
    a = ap.parse_args(argv)
    work = Path(a.work).absolute(); work.mkdir(parents=True, exist_ok=True)
    lessons = [n for n in ORDER if not a.only or n in a.only]
    if a.no_run:
        for nb in lessons: write_back(work/f'{Path(nb).stem}.executed.ipynb', REPO/'nbs'/nb, DOCS_SCALE.get(nb, ''), DOCS_IDS)
        return
    py = str(build(REPO/'.colab-venv')/'bin'/'python')
    subprocess.run([py, '-m', 'pip', 'uninstall', '-y', '-q', 'lesionseg'], capture_output=True) # lesson 00 installs this checkout
    bucket = work/'bucket'
    if not bucket.is_dir(): bucket.mkdir(); official_archives(bucket, DOCS_IDS)
    mp, had_content = Path('/content/drive'), Path('/content').exists()
    if mp.exists() and not mp.is_symlink(): raise SystemExit(f'{mp} exists: this machine looks like Colab itself')
    try:
        with serve_folder(bucket) as url:
            for nb in lessons: run_one(py, nb, work, url, a.write)
    finally: # the stand-in Drive's mount point goes, as after the rehearsal
        if mp.is_symlink(): mp.unlink()
        if not had_content and mp.parent.is_dir() and not any(mp.parent.iterdir()): mp.parent.rmdir()

if __name__ == '__main__': main()
