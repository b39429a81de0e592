"""The test environment: no model downloads (lessons never force the hub offline; a student in Colab gets the pretrained weights),
and two test processes (pytest-xdist, `-n auto` in pytest.ini), each on its own half of the cores."""
import os, queue
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')

def halves() -> list[set]:
    "This machine's cores in two halves (one set when there is one core)."
    cpus = sorted(os.sched_getaffinity(0))
    return [set(cpus[0::2]), set(cpus[1::2])] if len(cpus) > 1 else [set(cpus)]

def pytest_xdist_auto_num_workers(config):
    "`-n auto`: two workers where there are two cores or more; none (one process) for the Colab rehearsal, which runs its lessons two at a time itself."
    if any('colab' in Path(a).parts for a in config.args): return 0
    return min(2, len(os.sched_getaffinity(0)))

if (_w := os.environ.get('PYTEST_XDIST_WORKER')): # this process is worker gw<k>: keep to half k of the cores, before torch starts its threads
    os.sched_setaffinity(0, halves()[int(_w[2:]) % len(halves())])

@pytest.fixture(scope='session')
def on_half_cores():
    "`f(run, items)` -> `[run(item, cpus) ...]`, two items at a time, each given its own half of the cores (for a subprocess's affinity)."
    def f(run, items):
        free = queue.Queue()
        for h in halves(): free.put(h)
        def one(item):
            h = free.get()
            try: return run(item, h)
            finally: free.put(h)
        with ThreadPoolExecutor(free.qsize()) as pool: return list(pool.map(one, items))
    return f
