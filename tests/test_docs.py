"""The docs site builds: nbdev's own processing for rendering (`nbdev_proc_nbs`, what `nbdev_docs` runs before Quarto)
succeeds on every notebook. It executes the cells it needs for `show_doc` (exports, imports, `show_doc` calls) with
`IN_TEST` set and nothing else: a cell that imports and also runs a lesson's experiment would run here without its settings."""
import subprocess, sys
from pathlib import Path
import pytest
from nbdev.config import get_config

cfg = get_config()
NBS = sorted(p for p in Path(cfg.nbs_path).glob('*.ipynb') if not p.name.startswith(('_', '.')))
PROC = """import sys
from pathlib import Path
from nbdev.serve_drv import main
from nbdev.processors import FilterDefaults
main((Path(sys.argv[1]), Path(sys.argv[2]), FilterDefaults))"""

@pytest.mark.parametrize('nb', NBS, ids=[p.name for p in NBS])
def test_docs_processing(nb, tmp_path):
    out = tmp_path/nb.name
    p = subprocess.run([sys.executable, '-c', PROC, str(nb.absolute()), str(out)], capture_output=True, text=True, cwd=cfg.config_path)
    assert p.returncode == 0 and out.exists(), f"{nb.name}: nbdev's docs processing failed:\n{p.stderr[-4000:]}"
