"""A soak of the HTTP service: minutes of mixed good, bad, hostile and abandoned requests at its capacity.

Run from the repository root:
    python bench/serve_soak.py                       # 10 minutes, Swin-T+UPerNet at 256 px, 3 clients
    python bench/serve_soak.py --minutes 1 --out /tmp/soak.json

A model at its default config (random weights: they cost what trained ones do) is saved with `save_weights`, and
`lesionseg.serve.serve` runs it under uvicorn in a subprocess on a free port of 127.0.0.1 with its default limits
and timeouts (concurrency 1). --clients threads then send requests back to back for --minutes, each picking the
next kind in a fixed rotation:
  good:      the shared ISIC images as JPEG (PNG answer, mc 0 or 8; JSON answer with TTA), compared with the
             answer the same request got alone before the soak (deterministic ones) or checked for shape (MC ones);
  bad:       text, a truncated JPEG, an EPS file, a 600000 x 2 strip, a 50000 x 50000 PNG header, an option out of
             range: each must get its 4xx;
  heavy:     a 7000 x 7000 PNG of a few kB, answered at the capped output size;
  abandoned: a whole request on a raw socket, closed before the answer (the server should drop it unanswered);
  idle:      a socket that connects and says nothing (the server closes it after header_timeout);
  trickle:   a request head, then its body at 20 bytes a second (408 or closed, after body_timeout).
The server's RSS is sampled once a second. Checks: no 5xx, no wrong answer, and the RSS at the end (after the
clients stop and the server idles a few seconds) within --rss-slack-mb of the RSS after the warm-up.
Writes a JSON (--out) with the machine, the counts per kind and status, the latencies of good requests, the RSS
series summary, the server's own request counts (GET /info) and this command; exits 1 when a check fails.
"""
import argparse, io, json, os, socket, statistics, struct, subprocess, sys, tempfile, threading, time, zlib
from pathlib import Path
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import numpy as np, httpx
from PIL import Image
sys.path.insert(0, str(Path(__file__).parent))
from _common import SHARED, load1, machine, write_json
from serve_latency import CONFIGS, free_port, images
from lesionseg.weights import build_model, save_weights

def _chunk(t, d): return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))

def flat_png(w, h, rgb=(180, 120, 100)) -> bytes:
    "A complete w x h one-colour PNG, compressed row by row (a few kB for millions of pixels)."
    row, z = b'\x00' + bytes(rgb)*w, zlib.compressobj(9)
    data = b''.join(z.compress(row) for _ in range(h)) + z.flush()
    return b'\x89PNG\r\n\x1a\n' + _chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0)) + _chunk(b'IDAT', data) + _chunk(b'IEND', b'')

def png_header(w, h) -> bytes:
    return (b'\x89PNG\r\n\x1a\n' + _chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0))
            + _chunk(b'IDAT', zlib.compress(b'\x00'*100)) + _chunk(b'IEND', b''))

EPS = b'%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n0 0 moveto 8 8 lineto stroke\nshowpage\n%%EOF\n'

def multipart(name, data) -> tuple[bytes, bytes]:
    body = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="' + name.encode() + b'"\r\n'
            b'Content-Type: application/octet-stream\r\n\r\n' + data + b'\r\n--b--\r\n')
    head = (b'POST /predict HTTP/1.1\r\nHost: soak\r\nContent-Type: multipart/form-data; boundary=b\r\n'
            + f'Content-Length: {len(body)}\r\n\r\n'.encode())
    return head, body

def rss_mb(pid) -> float:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'): return int(line.split()[1])/1024
    return float('nan')

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--minutes', type=float, default=10)
    ap.add_argument('--clients', type=int, default=3, help='client threads sending back to back (the server works on 1 at a time)')
    ap.add_argument('--arch', default='swin-upernet', choices=sorted(CONFIGS))
    ap.add_argument('--size', type=int, default=256)
    ap.add_argument('--rss-slack-mb', type=float, default=100, help='how far above the warm RSS the end RSS may be')
    ap.add_argument('--out', default='bench/results/serve_soak_cpu.json')
    a = ap.parse_args()
    load0 = load1()
    tmp = Path(tempfile.mkdtemp())
    import torch; torch.manual_seed(0)
    model = build_model(a.arch, {**CONFIGS[a.arch], 'img_size': a.size})
    weights = save_weights(tmp/'model.pth', model, a.arch, a.size, summary={'note': 'random weights, for the soak'})
    del model
    jpgs, src = images(16)
    port = free_port(); url = f'http://127.0.0.1:{port}'
    log = open(tmp/'server.log', 'w+')
    code = f"from lesionseg.serve import serve; serve({str(weights)!r}, port={port}, log_level='warning', concurrency=1, header_timeout=2, body_timeout=5)"
    proc = subprocess.Popen([sys.executable, '-c', code], stdout=log, stderr=subprocess.STDOUT)
    for _ in range(600):
        if proc.poll() is not None: raise SystemExit(f'the server exited ({proc.returncode}):\n{log.name}')
        try:
            if httpx.get(url + '/health', timeout=1).status_code == 200: break
        except httpx.TransportError: pass
        time.sleep(0.2)
    big = flat_png(7000, 7000); strip = flat_png(600_000, 2)
    with httpx.Client(base_url=url, timeout=120) as c: # references, alone, and the warm-up
        refs = {i: c.post('/predict', files={'file': (f'{i}.jpg', j)}, params={'format': 'json', 'tta': 'true'}).json() for i, j in enumerate(jpgs)}
        for j in jpgs[:4]: c.post('/predict', files={'file': ('w.jpg', j)}, params={'mc': 8})
        c.post('/predict', files={'file': ('big.png', big)})
    time.sleep(2); rss_warm = rss_mb(proc.pid)

    counts, wrong, lat, lock = {}, [], [], threading.Lock()
    def note(kind, status, bad=None, secs=None):
        with lock:
            counts.setdefault(kind, {}).setdefault(str(status), 0); counts[kind][str(status)] += 1
            if bad: wrong.append(f'{kind}: {bad}')
            if secs is not None: lat.append(secs)
    def same(j, r): return (j['width'], j['height']) == (r['width'], r['height']) and abs(j['lesion_fraction'] - r['lesion_fraction']) < 1e-3
    BAD = [('text', ('notes.txt', b'hello, I am text'), {}, 415), ('truncated', ('cut.jpg', jpgs[0][:len(jpgs[0])//2]), {}, 400),
           ('eps', ('x.eps', EPS), {}, 415), ('strip', ('strip.png', strip), {}, 422), ('bomb', ('bomb.png', png_header(50_000, 50_000)), {}, 413),
           ('mc out of range', ('x.jpg', jpgs[1]), {'mc': 999}, 422)]
    KINDS = ['good-png', 'bad', 'good-json', 'abandoned', 'good-mc', 'heavy', 'bad', 'idle', 'good-png', 'trickle']
    stop = time.monotonic() + a.minutes*60

    def client(k):
        i = k
        with httpx.Client(base_url=url, timeout=120) as c:
            while time.monotonic() < stop:
                kind = KINDS[i % len(KINDS)]; n = (i//len(KINDS)) % len(jpgs); i += a.clients
                try:
                    if kind.startswith('good'):
                        t0 = time.perf_counter()
                        if kind == 'good-json':
                            r = c.post('/predict', files={'file': (f'{n}.jpg', jpgs[n])}, params={'format': 'json', 'tta': 'true'})
                            ok = r.status_code == 200 and same(r.json(), refs[n])
                        else:
                            r = c.post('/predict', files={'file': (f'{n}.jpg', jpgs[n])}, params={'mc': 8 if kind == 'good-mc' else 0})
                            ok = r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (2*refs[n]['width'], refs[n]['height'])
                        note(kind, r.status_code, None if ok else f'{r.status_code} {r.text[:120]}', time.perf_counter() - t0)
                    elif kind == 'bad':
                        what, f, params, want = BAD[(i//len(KINDS)) % len(BAD)]
                        r = c.post('/predict', files={'file': f}, params=params)
                        note(f'bad: {what}', r.status_code, None if r.status_code == want else f'{what}: {r.status_code}, expected {want}')
                    elif kind == 'heavy':
                        r = c.post('/predict', files={'file': ('big.png', big)}, params={'format': 'json'})
                        ok = r.status_code == 200 and r.json()['width']*r.json()['height'] <= 8_000_000
                        note(kind, r.status_code, None if ok else f'{r.status_code} {r.text[:120]}')
                    elif kind == 'abandoned':
                        head, body = multipart(f'{n}.jpg', jpgs[n])
                        with socket.create_connection(('127.0.0.1', port), timeout=10) as s: s.sendall(head + body); time.sleep(0.01)
                        note(kind, 'closed by the client')
                    elif kind == 'idle':
                        with socket.create_connection(('127.0.0.1', port), timeout=10) as s:
                            t0 = time.monotonic(); s.settimeout(10)
                            try: closed = s.recv(1) == b''
                            except (socket.timeout, ConnectionResetError): closed = False
                            note(kind, 'closed by the server' if closed else 'held', None if closed else 'an idle socket was held 10 s')
                    elif kind == 'trickle':
                        head, body = multipart(f'{n}.jpg', jpgs[n])
                        with socket.create_connection(('127.0.0.1', port), timeout=15) as s:
                            s.sendall(head); got = b''; t0 = time.monotonic()
                            s.settimeout(0.05)
                            try:
                                for b in body[:400]:
                                    s.send(bytes([b]))
                                    try:
                                        d = s.recv(4096)
                                        if not d: break
                                        got += d
                                    except socket.timeout: pass
                            except (ConnectionResetError, BrokenPipeError): pass # the server closed it while bytes were in flight
                            status = got[9:12].decode() if got.startswith(b'HTTP/1.1 ') else 'closed'
                            note(kind, status, None if status in ('408', 'closed') else f'a trickling upload got {got[:40]!r}')
                except Exception as e: note(kind, type(e).__name__, f'{type(e).__name__}: {e}')

    samples, t_start = [], time.monotonic()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(a.clients)]
    for t in threads: t.start()
    while any(t.is_alive() for t in threads):
        samples.append((round(time.monotonic() - t_start, 1), round(rss_mb(proc.pid), 1))); time.sleep(1)
    time.sleep(5); rss_end = rss_mb(proc.pid)
    info = httpx.get(url + '/info', timeout=10).json()
    proc.terminate(); proc.wait(15)
    five = {k: v for k, v in counts.items() for s in v if s.startswith('5')}
    if five: wrong.append(f'5xx answers: {five}')
    if rss_end > rss_warm + a.rss_slack_mb: wrong.append(f'RSS {rss_end:.0f} MB at the end, {rss_warm:.0f} MB after the warm-up')
    rss = [m for _, m in samples]
    res = dict(command='python ' + ' '.join(sys.argv), machine=machine(False, load0), images=src, minutes=a.minutes, clients=a.clients,
               arch=a.arch, size=a.size, server='concurrency 1, default limits, header_timeout 2 s, body_timeout 5 s',
               counts=counts, good_latency_s=dict(n=len(lat), p50=round(statistics.median(lat), 3) if lat else None,
                                                  p95=round(float(np.percentile(lat, 95)), 3) if lat else None),
               rss_mb=dict(after_warmup=round(rss_warm, 1), max=max(rss), end=round(rss_end, 1),
                           every_30s=[s for s in samples if s[0] % 30 < 1]),
               server_counts=info['requests'], problems=wrong, ok=not wrong)
    print(json.dumps({k: res[k] for k in ('counts', 'good_latency_s', 'rss_mb', 'server_counts', 'problems')}, indent=1))
    print('wrote', write_json(a.out, res))
    raise SystemExit(0 if not wrong else 1)

if __name__ == '__main__': main()
