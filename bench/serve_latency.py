"""Latency and throughput of the HTTP service on the real server over loopback.

Run from the repository root:
    python bench/serve_latency.py                                   # Swin-T+UPerNet, 256x256, mc=20, server concurrency 1 and 2
    python bench/serve_latency.py --arch unet --concurrency 1 --out bench/results/serve_latency_unet_cpu.json

A model at its default config (pretrained=False: random weights time the same as trained ones) is saved with
`save_weights` at --size, and `lesionseg.serve.serve` runs it under uvicorn in a subprocess on a free port of
127.0.0.1, once per server --concurrency. The clients upload JPEGs: the shared ISIC 2018 images (256x192) when
present, else synthetic lesions of that size, with `?mc=<--mc>`, and read the default answer (the PNG: mask and
uncertainty heatmap). After --warmup requests:
  * 1 client: --n1 requests one after another;
  * --clients concurrent clients (threads, one keep-alive connection each): --n8 requests in all;
  * and, for reference, 1 client with mc=0 (one deterministic forward pass).
Latency is the client's wall time per request (upload to the last byte of the answer); throughput is requests
answered / wall time of the phase; errors are answers that are not 200 or not a PNG of the right size.
Writes a JSON (--out) with the machine, the server's torch threads, the options, the numbers and this command.
"""
import argparse, json, os, platform, socket, statistics, subprocess, sys, tempfile, time, io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
os.environ.setdefault('HF_HUB_OFFLINE', '1')
import numpy as np, torch, httpx
from PIL import Image
from lesionseg.weights import build_model, save_weights

SHARED = Path(__file__).resolve().parents[2]/'shared'/'data'/'isic2018-task1-train-256x192'
CONFIGS = {'swin-upernet': dict(pretrained=False), 'unet': dict(pretrained=False, arch='resnet34')}

def free_port():
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def images(n):
    "JPEG bytes of n images: the shared ISIC ones when present, else synthetic lesions (256x192)."
    files = sorted((SHARED/'images').glob('*.jpg'))[:n] if SHARED.is_dir() else []
    if files: return [f.read_bytes() for f in files], f'ISIC 2018 ({SHARED.name}), first {len(files)} images'
    from lesionseg.data import synth_lesion
    out = []
    for i in range(n):
        b = io.BytesIO(); Image.fromarray(synth_lesion(i, (192, 256))[0]).save(b, 'JPEG', quality=90); out.append(b.getvalue())
    return out, f'synthetic lesions 256x192, {n} images'

def start(weights, concurrency, device, log):
    port = free_port()
    code = (f"from lesionseg.serve import serve; serve({str(weights)!r}, port={port}, log_level='warning', "
            f"concurrency={concurrency}, max_queue=256, device={device!r})")
    p = subprocess.Popen([sys.executable, '-c', code], stdout=log, stderr=subprocess.STDOUT)
    url = f'http://127.0.0.1:{port}'
    for _ in range(600):
        if p.poll() is not None: raise RuntimeError(f'server exited with {p.returncode}; see {log.name}')
        try:
            if httpx.get(url + '/health', timeout=1).status_code == 200: return p, url
        except httpx.TransportError: pass
        time.sleep(0.2)
    p.kill(); raise RuntimeError('server did not start in 120 s')

def cpu_model():
    "The CPU's model name (Linux), else platform's guess."
    try: return next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except (OSError, StopIteration): return platform.processor() or platform.machine()

def pct(xs, q): return float(np.percentile(np.asarray(xs), q)) if xs else None

def phase(url, imgs, n, clients, mc, sizes):
    "n requests from `clients` threads; latencies, errors, throughput and the server's own inference time."
    lat, srv, errors = [], [], []
    def worker(k):
        with httpx.Client(base_url=url, timeout=300) as c:
            for i in range(k, n, clients):
                img = imgs[i % len(imgs)]
                t = time.perf_counter()
                try:
                    r = c.post('/predict', files={'file': (f'{i}.jpg', img, 'image/jpeg')}, params={'mc': mc})
                    dt = time.perf_counter() - t
                    ok = r.status_code == 200 and r.headers.get('content-type') == 'image/png'
                    if ok:
                        w, h = Image.open(io.BytesIO(r.content)).size
                        ok = (h, w // 2) == sizes[i % len(imgs)]
                    if ok: lat.append(dt); srv.append(float(r.headers['x-inference-seconds']))
                    else: errors.append(f'{r.status_code}: {r.text[:200]}')
                except httpx.HTTPError as e: errors.append(f'{type(e).__name__}: {e}')
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex: list(ex.map(worker, range(clients)))
    wall = time.perf_counter() - t0
    return dict(clients=clients, requests=n, mc=mc, errors=len(errors), error_examples=errors[:3],
                p50_s=pct(lat, 50), p95_s=pct(lat, 95), mean_s=float(np.mean(lat)) if lat else None,
                throughput_rps=len(lat)/wall, wall_s=wall, server_inference_p50_s=pct(srv, 50))

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--arch', default='swin-upernet', choices=list(CONFIGS))
    ap.add_argument('--size', type=int, default=256)
    ap.add_argument('--mc', type=int, default=20)
    ap.add_argument('--concurrency', type=int, nargs='+', default=[1, 2], help="the server's concurrency (one server each)")
    ap.add_argument('--clients', type=int, default=8)
    ap.add_argument('--n1', type=int, default=20)
    ap.add_argument('--n8', type=int, default=48)
    ap.add_argument('--n0', type=int, default=10, help='requests with mc=0 (1 client), for reference')
    ap.add_argument('--warmup', type=int, default=3)
    ap.add_argument('--device', default=None, help="the server's device; default: cuda if available, else cpu")
    ap.add_argument('--out', default=None)
    a = ap.parse_args()
    dev = a.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    out = Path(a.out or f'bench/results/serve_latency_{"cuda" if dev.startswith("cuda") else "cpu"}.json')
    imgs, source = images(16)
    sizes = [Image.open(io.BytesIO(b)).size[::-1] for b in imgs]
    torch.manual_seed(0)
    model = build_model(a.arch, {**CONFIGS[a.arch], 'img_size': a.size})
    res = dict(benchmark='serve_latency', arch=a.arch, config=model.config, size=a.size, device=dev,
               cpu=cpu_model(), machine=platform.machine(), python=platform.python_version(), cores=len(os.sched_getaffinity(0)),
               cpus_on_host=os.cpu_count(),
               gpu=torch.cuda.get_device_name(0) if dev.startswith('cuda') else None, torch=torch.__version__,
               images=source, response='image/png (mask | uncertainty heatmap)', load_average_before=os.getloadavg(),
               command='python ' + ' '.join(sys.argv), runs=[])
    with tempfile.TemporaryDirectory() as td:
        w = save_weights(Path(td)/'model.pth', model, a.arch, a.size)
        del model
        for conc in a.concurrency:
            with open(Path(td)/f'server-{conc}.log', 'w+') as log:
                p, url = start(w, conc, dev, log)
                try:
                    info = httpx.get(url + '/info').json()
                    phase(url, imgs, a.warmup, 1, a.mc, sizes)
                    run = dict(server_concurrency=conc, torch_threads=info['torch_threads'], device=info['device'],
                               one_client=phase(url, imgs, a.n1, 1, a.mc, sizes),
                               concurrent=phase(url, imgs, a.n8, a.clients, a.mc, sizes),
                               one_client_mc0=phase(url, imgs, a.n0, 1, 0, sizes))
                finally:
                    p.terminate(); p.wait(30)
                    log.seek(0); tail = log.read()[-2000:]
            if any(run[k]['errors'] for k in ('one_client', 'concurrent', 'one_client_mc0')): run['server_log_tail'] = tail
            res['runs'].append(run)
            o, c8, z = run['one_client'], run['concurrent'], run['one_client_mc0']
            print(f"server concurrency {conc} ({run['torch_threads']} torch threads): 1 client mc={a.mc} p50 {o['p50_s']:.3f} s "
                  f"p95 {o['p95_s']:.3f} s {o['throughput_rps']:.2f} req/s | {a.clients} clients p50 {c8['p50_s']:.3f} s "
                  f"p95 {c8['p95_s']:.3f} s {c8['throughput_rps']:.2f} req/s, errors {o['errors'] + c8['errors']} | "
                  f"mc=0 p50 {z['p50_s']:.3f} s", flush=True)
    res['load_average_after'] = os.getloadavg()
    res['goal'] = 'one client, 20 MC samples, 256x256, 2 CPU cores: p50 <= 0.35 s (DESIGN.md)'
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix('.tmp'); tmp.write_text(json.dumps(res, indent=1) + '\n'); os.replace(tmp, out)
    print(f'wrote {out}')

if __name__ == '__main__': main()
