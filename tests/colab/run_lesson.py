"""Run one lesson as a student in Colab would, in the Colab-like environment of `colab_env.py`.

`VENV/bin/python tests/colab/run_lesson.py NB --out EXECUTED.ipynb --content DIR --drive DIR [options]`

- The kernel is VENV's Python (the one running this script), with the stand-in `google.colab` of this
  folder importable, and cwd a fresh "/content"-like folder (no `../shared` above it, as in Colab).
- The lesson's install cell gets this checkout instead of GitHub (`git+https://github.com/...` becomes
  `file://<checkout>`), so the lesson installs the working tree exactly as Colab installs the repository.
- `--set 'SIZE = 64; EPOCHS = 2'` runs after the cell tagged `parameters` (papermill's convention):
  the student's own edits of the settings cell.
- `--test-flags`: as under the test runner (`IN_TEST=1`; `#| slow`, `#| notest` and `#| eval: false`
  cells dropped), to check every lesson's test mode in Colab's versions.
- `--kill-when PATH`: kill the kernel as soon as PATH exists (a disconnected Colab session); exit status 3.
"""
from __future__ import annotations
import argparse, os, re, sys, threading, time, signal
from pathlib import Path

REPO = Path(__file__).absolute().parents[2]
HERE = Path(__file__).absolute().parent
GITHUB = re.compile(r'git\+https://github\.com/lesionseg/lesionseg(\.git)?')
SKIP_FLAGS = re.compile(r'^\s*#\s*\|\s*(slow|notest|eval:\s*false)\s*$', re.M)

def prepare_nb(nb, overrides:str|None=None, test_flags:bool=False, repo:Path=REPO):
    "The lesson as it will run: install from `repo`, overrides after the parameters cell, test-mode cells dropped."
    import nbformat
    cells, found = [], False
    for c in nb.cells:
        if c.cell_type == 'code':
            if test_flags and SKIP_FLAGS.search(c.source): continue
            c.source = GITHUB.sub(f'file://{repo}', c.source)
        cells.append(c)
        if c.cell_type == 'code' and 'parameters' in c.get('metadata', {}).get('tags', []):
            found = True
            if overrides: cells.append(nbformat.v4.new_code_cell(f'# injected by the rehearsal\n{overrides}'))
    if overrides and not found: raise SystemExit("--set given but the lesson has no cell tagged 'parameters'")
    nb.cells = cells
    return nb

def _killer(client, path:Path, flag:dict):
    while not flag.get('done'):
        if path.exists():
            time.sleep(0.5) # let the writer finish its rename
            try: pid = client.km.provisioner.process.pid
            except AttributeError: pid = None
            if pid: os.kill(pid, signal.SIGKILL); flag['killed'] = True
            return
        time.sleep(0.2)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('nb'); ap.add_argument('--out', required=True)
    ap.add_argument('--content', required=True, help='the working directory ("/content")')
    ap.add_argument('--drive', required=True, help="the folder that plays Google Drive")
    ap.add_argument('--set', dest='overrides'); ap.add_argument('--test-flags', action='store_true')
    ap.add_argument('--kill-when'); ap.add_argument('--timeout', type=int, default=1800, help='seconds per cell')
    a = ap.parse_args(argv)
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, DeadKernelError
    nb = prepare_nb(nbformat.read(a.nb, as_version=4), a.overrides, a.test_flags)
    env = dict(os.environ, COLAB_REHEARSAL_DRIVE=str(Path(a.drive).absolute()),
               PYTHONPATH=os.pathsep.join([str(HERE)] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get('PATH', '')]),
               MPLBACKEND='module://matplotlib_inline.backend_inline', PIP_DISABLE_PIP_VERSION_CHECK='1',
               PYDEVD_DISABLE_FILE_VALIDATION='1')
    env.pop('IN_TEST', None); env.pop('LESIONSEG_ROOT', None)
    if a.test_flags: env['IN_TEST'] = '1'
    Path(a.content).mkdir(parents=True, exist_ok=True)
    client = NotebookClient(nb, timeout=a.timeout, kernel_name='python3', resources={'metadata': {'path': a.content}})
    flag, status = {}, 0
    t0 = time.time()
    try:
        with client.setup_kernel(env=env, cwd=a.content):
            if a.kill_when: threading.Thread(target=_killer, args=(client, Path(a.kill_when), flag), daemon=True).start()
            for i, cell in enumerate(nb.cells): client.execute_cell(cell, i)
    except DeadKernelError:
        status = 3 if flag.get('killed') else 1
    except CellExecutionError as e:
        print(str(e)[-4000:], file=sys.stderr); status = 1
    finally:
        flag['done'] = True
        nbformat.write(nb, a.out)
    print(f"{Path(a.nb).name}: {'killed as planned' if status == 3 else 'ok' if status == 0 else 'FAILED'} "
          f"after {time.time() - t0:.0f} s")
    return status

if __name__ == '__main__': sys.exit(main())
