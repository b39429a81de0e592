"""Build a virtual environment with Google Colab's versions of every package lesionseg touches.

`python tests/colab/colab_env.py VENV` creates (or reuses) VENV with the versions in
`../shared/colab/pip-freeze.gpu.txt` (Colab's published freeze) for lesionseg's requirements, its
`course` extra and the Jupyter kernel machinery, and this machine's torch (Colab's CUDA build is
several GB). lesionseg itself is not installed: the first cell of lesson 00 does that, as in Colab.
"""
from __future__ import annotations
import hashlib, json, re, subprocess, sys, venv
from configparser import ConfigParser
from pathlib import Path

REPO = Path(__file__).absolute().parents[2]
FREEZE = REPO.parent/'shared'/'colab'/'pip-freeze.gpu.txt'
TORCH = ['torch==2.14.1', 'torchvision==0.29.1'] # the machine's (local wheels on Python 3.11); Colab: 2.11 + cu128
NOT_PINNED = re.compile(r'^(torch|torchvision|torchaudio|torchcodec|triton|nvidia-.*|cuda-.*)$') # come with the machine's torch
KERNEL = ['nbclient', 'nbformat', 'ipykernel', 'jupyter_client', 'jupyter_core', 'ipython'] # what runs a notebook in Colab

def _name(req:str) -> str: return re.split(r'[<>=!~\[; @]', req.strip(), maxsplit=1)[0]
def norm(name:str) -> str: return re.sub(r'[-_.]+', '-', name).lower()

def colab_versions(freeze:Path=FREEZE) -> dict:
    "{normalised name: version} of Colab's freeze (plain `name==version` lines only)."
    out = {}
    for line in freeze.read_text().splitlines():
        if m := re.match(r'^([A-Za-z0-9_.\-]+)==([^\s;]+)', line.strip()): out[norm(m[1])] = m[2]
    return out

def settings():
    "settings.ini's values (requirements and extras among them)."
    cfg = ConfigParser(delimiters=['=']); cfg.read(REPO/'settings.ini')
    return cfg['DEFAULT']

def dev_requirement(name:str) -> str:
    "The development requirement for the package `name`, as settings.ini pins it."
    return next(r for r in settings()['dev_requirements'].split() if norm(_name(r)) == norm(name))

def wanted() -> list[str]:
    "The packages lesionseg's requirements, its `course` extra and a notebook kernel need, by name."
    d = settings()
    reqs = d['requirements'].split() + d.get('course_requirements', '').split()
    return sorted({norm(_name(r)) for r in reqs} | {norm(k) for k in KERNEL})

def constraints(versions:dict) -> str:
    return '\n'.join(f'{k}=={v}' for k, v in sorted(versions.items()) if not NOT_PINNED.match(k)) + '\n'

def build(dest:str|Path) -> Path:
    "Create `dest` with Colab's versions (reused when it was built from the same freeze and settings)."
    dest = Path(dest).absolute()
    versions = colab_versions()
    names = [n for n in wanted() if not NOT_PINNED.match(n) and n in versions] # the rest (grad-cam) Colab lacks: the
                                                                             # lesson's install adds them, as it does there
    key = hashlib.sha256(json.dumps([constraints(versions), names, TORCH]).encode()).hexdigest()[:16]
    stamp = dest/'.colab-env'
    if stamp.exists() and stamp.read_text() == key: return dest
    venv.EnvBuilder(with_pip=True, clear=True).create(dest)
    py = str(dest/'bin'/'python')
    (dest/'colab-constraints.txt').write_text(constraints(versions))
    pip = [py, '-m', 'pip', 'install', '-q', '--disable-pip-version-check']
    subprocess.run(pip + TORCH, check=True)
    subprocess.run(pip + ['-c', str(dest/'colab-constraints.txt')] + [f'{n}=={versions[n]}' for n in names], check=True)
    stamp.write_text(key)
    return dest

def freeze(dest:str|Path) -> dict:
    "{normalised name: version} installed in the environment `dest`."
    out = subprocess.run([str(Path(dest)/'bin'/'python'), '-m', 'pip', 'list', '--format=json', '--disable-pip-version-check'],
                         check=True, capture_output=True, text=True).stdout
    return {norm(o['name']): o['version'] for o in json.loads(out)}

if __name__ == '__main__':
    if len(sys.argv) != 2: raise SystemExit(__doc__)
    print(build(sys.argv[1]))
