"The test environment: no model downloads (lessons never force the hub offline; a student in Colab gets the pretrained weights)."
import os, queue
from concurrent.futures import ThreadPoolExecutor
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')

def halves() -> list[set]:
    "This machine's cores in two halves (one set when there is one core)."
    cpus = sorted(os.sched_getaffinity(0))
    return [set(cpus[0::2]), set(cpus[1::2])] if len(cpus) > 1 else [set(cpus)]

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
