"""What the rehearsal stands in for: the challenge's bucket of ISIC 2018 archives, made from the shared real images."""
from __future__ import annotations
import threading, zipfile
from contextlib import contextmanager
from functools import partial
from http.server import ThreadingHTTPServer, SimpleHTTPRequestHandler
from pathlib import Path

REPO = Path(__file__).absolute().parents[2]
REAL = REPO.parent/'shared'/'data'/'isic2018-task1-train-256x192'

def official_archives(dest:Path, n_ids:dict, real:Path=REAL) -> Path:
    "The six ISIC 2018 Task 1 archives in the official layout in `dest`, `n_ids[split]` real images each (disjoint ids)."
    from lesionseg.preprocessing import ISIC2018_SPLITS
    ids = sorted(p.stem for p in (real/'images').glob('ISIC_*.jpg'))
    if sum(n_ids.values()) > len(ids): raise ValueError(f"{real} has {len(ids)} images, fewer than the {sum(n_ids.values())} asked for")
    start = 0
    for split, n in n_ids.items():
        chosen, start = ids[start:start + n], start + n
        inp, gt = ISIC2018_SPLITS[split]
        for name, files in ((inp, [real/'images'/f'{i}.jpg' for i in chosen]),
                            (gt, [real/'masks'/f'{i}_segmentation.png' for i in chosen])):
            with zipfile.ZipFile(dest/f'{name}.zip', 'w') as z:
                for f in files: z.write(f, f'{name}/{f.name}')
                z.writestr(f'{name}/LICENSE.txt', 'CC BY-NC 4.0 (ISIC Archive)')
    return dest

@contextmanager
def serve_folder(folder:Path):
    "Serve `folder` over HTTP on loopback; yields its base URL (ending in '/')."
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *a): pass
    srv = ThreadingHTTPServer(('127.0.0.1', 0), partial(Quiet, directory=str(folder)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try: yield f'http://127.0.0.1:{srv.server_address[1]}/'
    finally: srv.shutdown(); srv.server_close()
