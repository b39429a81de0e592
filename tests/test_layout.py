"""The library's layout follows the course: a module imports only modules of earlier lessons (so there is no import
circle, and a lesson never needs a later one), and no private name (`_x`) crosses from one module to another."""
import ast, re, sys
from pathlib import Path
import pytest

REPO = Path(__file__).parents[1]
LIB, NBS = REPO/'lesionseg', REPO/'nbs'

def lessons() -> dict:
    "module -> the notebook that exports it (its `default_exp`); course order is name order."
    out = {}
    for nb in sorted(NBS.glob('*.ipynb')):
        if m := re.search(r'#\| default_exp (\w+)', nb.read_text()): out[m.group(1)] = nb.stem
    return out

def lesionseg_imports(mod:str) -> list:
    "(module imported, names imported, inside a function?) for each import of a lesionseg module in `mod`."
    found = []
    def visit(node, in_fn):
        for ch in ast.iter_child_nodes(node):
            fn = in_fn or isinstance(ch, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(ch, ast.ImportFrom):
                name = ch.module or ''
                if ch.level == 1: found.append((name.split('.')[0], [a.name for a in ch.names], fn))
                elif name.startswith('lesionseg.'): found.append((name.split('.')[1], [a.name for a in ch.names], fn))
            elif isinstance(ch, ast.Import):
                found.extend((a.name.split('.')[1], [], fn) for a in ch.names if a.name.startswith('lesionseg.'))
            visit(ch, fn)
    visit(ast.parse((LIB/f'{mod}.py').read_text()), False)
    return found

MODULES = lessons()

def test_every_module_has_its_lesson():
    assert set(MODULES) == {p.stem for p in LIB.glob('*.py') if not p.stem.startswith('_')}

@pytest.mark.parametrize('mod', sorted(MODULES))
def test_imports_follow_the_lessons(mod):
    later = [(m, MODULES.get(m)) for m, _, _ in lesionseg_imports(mod) if MODULES.get(m, '~') >= MODULES[mod]]
    assert not later, f"{mod} ({MODULES[mod]}) imports a module of its own or a later lesson: {later}"

@pytest.mark.parametrize('mod', sorted(MODULES))
def test_no_private_name_crosses_modules(mod):
    private = [(m, n) for m, names, _ in lesionseg_imports(mod) for n in names if n.startswith('_') and n != '__version__']
    assert not private, f"{mod} imports private names of other modules: {private}"

def test_the_checks_can_fail(tmp_path, monkeypatch):
    "A module that imports a later lesson, or a private name, is caught."
    (tmp_path/'early.py').write_text("from .late import thing\nfrom .other import _secret\ndef f():\n    from lesionseg.late import x\n")
    monkeypatch.setattr(sys.modules[__name__], "LIB", tmp_path)
    found = lesionseg_imports('early')
    assert found == [('late', ['thing'], False), ('other', ['_secret'], False), ('late', ['x'], True)]
