"""The HTTP service on a real socket: uvicorn in a subprocess on loopback, bad input, colours, JSON, and load.

Each server runs `lesionseg.serve.serve` over a tiny random Swin-UPerNet (64 x 64) written by `save_weights`."""
import base64, io, os, socket, struct, subprocess, sys, time, zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import numpy as np, pytest, torch
import httpx
from PIL import Image

os.environ.setdefault('HF_HUB_OFFLINE', '1')
from lesionseg.data import synth_lesion
from lesionseg.inference import Segmenter, decode_image
from lesionseg.weights import save_weights
from lesionseg.viz import side_by_side
from lesionseg.upernet import SwinUPerNet, tiny_config

MAX_BYTES, MAX_PIXELS, MAX_MC = 300_000, 4_000_000, 20
pytestmark = pytest.mark.xdist_group('serve') # one worker starts this file's servers, once

def _free_port() -> int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _rss_kb(pid:int) -> int:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith('VmRSS:'): return int(line.split()[1])
    raise RuntimeError(f'no VmRSS for pid {pid}')

class Server:
    "`lesionseg.serve.serve(weights, **kw)` in a subprocess on a free loopback port (after the Python lines `prelude`)."
    def __init__(self, weights, prelude:str='', **kw):
        self.port = _free_port(); self.url = f'http://127.0.0.1:{self.port}'
        code = prelude + (f"from lesionseg.serve import serve; serve({str(weights)!r}, port={self.port}, log_level='warning', "
                + ', '.join(f'{k}={v!r}' for k, v in kw.items()) + ')')
        self.log = open(Path(weights).parent/f'server-{self.port}.log', 'w+')
        self.proc = subprocess.Popen([sys.executable, '-c', code], stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    def wait_ready(self):
        "Wait until /health answers (the model is loaded)."
        deadline = time.time() + 90
        while time.time() < deadline:
            if self.proc.poll() is not None: raise RuntimeError(f'the server exited ({self.proc.returncode}):\n{self.output()}')
            try:
                if httpx.get(self.url + '/health', timeout=1).status_code == 200: return
            except httpx.TransportError: pass
            time.sleep(0.2)
        self.stop(); raise RuntimeError(f'the server did not answer /health in 90 s:\n{self.output()}')
    def output(self) -> str: self.log.flush(); self.log.seek(0); return self.log.read()
    def alive(self) -> bool: return self.proc.poll() is None and httpx.get(self.url + '/health', timeout=10).json() == {'status': 'ok'}
    def stop(self):
        self.proc.terminate()
        try: self.proc.wait(15)
        except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait()
        self.log.close()

@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = SwinUPerNet(**tiny_config)
    with torch.no_grad(): model.head.weight.mul_(30) # spread the random logits: probabilities near 0, near 1 and between
    return save_weights(tmp_path_factory.mktemp('serve')/'tiny.pth', model, 'swin-upernet', 64, summary={'epochs': 0})

@pytest.fixture(scope='module')
def server(weights):
    s = Server(weights, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS, max_mc=MAX_MC, concurrency=2)
    try: s.wait_ready(); yield s
    finally: s.stop()

class ThreadServer:
    "`uvicorn.Server` in a thread of this process (no second start-up of torch and fastai)."
    def __init__(self, weights, **kw):
        import threading, uvicorn
        from lesionseg.serve import create_app
        port = _free_port(); self.url = f'http://127.0.0.1:{port}'
        self.srv = uvicorn.Server(uvicorn.Config(create_app(weights, **kw), host='127.0.0.1', port=port, log_level='warning'))
        self.th = threading.Thread(target=self.srv.run, daemon=True); self.th.start()
        deadline = time.time() + 60
        while not self.srv.started:
            assert self.th.is_alive() and time.time() < deadline, 'the in-thread server did not start'
            time.sleep(0.05)
    def alive(self) -> bool: return httpx.get(self.url + '/health', timeout=10).json() == {'status': 'ok'}
    def stop(self): self.srv.should_exit = True; self.th.join(30)

@pytest.fixture(scope='module')
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c: yield c

def _encode(a, fmt='PNG', **kw) -> bytes:
    buf = io.BytesIO(); (a if isinstance(a, Image.Image) else Image.fromarray(a)).save(buf, fmt, **kw); return buf.getvalue()

def _png_header(w, h) -> bytes:
    "A PNG that claims to be w x h but holds one short row."
    chunk = lambda t, d: struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0))
            + chunk(b'IDAT', zlib.compress(b'\x00'*100)) + chunk(b'IEND', b''))

IMG = synth_lesion(3, (150, 200))[0]
JPG = _encode(IMG, 'JPEG', quality=90)

def _served(seg:Segmenter, data:bytes) -> dict:
    "`seg.predict` on `data` as the service decodes it: reduced to no less than the model's input, answered at the picture's size."
    image, hw = decode_image(data, min_size=seg.size)
    return seg.predict(image, hw)

def _png_rgb(content) -> np.ndarray: return np.asarray(Image.open(io.BytesIO(content)).convert('RGB'))

# ---- health, info, startup -------------------------------------------------------------------------------------------

def test_health_and_info(client, weights):
    assert client.get('/health').json() == {'status': 'ok'}
    i = client.get('/info').json()
    assert (i['arch'], i['size'], i['threshold']) == ('swin-upernet', [64, 64], 0.5)
    assert i['weights']['name'] == weights.name and i['weights']['bytes'] == weights.stat().st_size and len(i['weights']['sha256']) == 64
    assert i['summary'] == {'epochs': 0} and i['lesionseg_version'] and i['device'] == 'cpu'
    assert i['limits'] == dict(max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS, max_output_pixels=8_000_000, max_aspect=10, max_mc=MAX_MC,
                               concurrency=2, max_queue=64, request_timeout=60, body_timeout=60)
    assert i['server'] == dict(header_timeout=10, keep_alive=5, max_connections=min(200, i['server']['max_connections']))
    assert set(i['requests']) == {'served', 'refused', 'busy', 'timed_out', 'dropped', 'failed'}
    assert i['torch_threads'] == max(1, len(os.sched_getaffinity(0))//2) # concurrency 2: half the cores each, no oversubscription

def test_missing_weights_is_a_clear_startup_error(tmp_path, capfd):
    "uvicorn (in this process) refuses to start, and its log names the file."
    import uvicorn
    from lesionseg.serve import create_app
    srv = uvicorn.Server(uvicorn.Config(create_app(tmp_path/'nope.pth'), host='127.0.0.1', port=_free_port(), log_level='error'))
    with pytest.raises(SystemExit) as e: srv.run()
    assert e.value.code == 3 and not srv.started # uvicorn's STARTUP_FAILURE
    err = capfd.readouterr().err
    assert 'cannot load the weights' in err and f"{tmp_path/'nope.pth'}: no such file" in err, err[-2000:]

@pytest.mark.parametrize('case', ['not a weights file', 'pickled code', 'no weights at all'])
def test_wrong_weights_fail_at_startup(tmp_path, capfd, monkeypatch, case):
    "A file that is not a weights file, one that needs unpickling (refused by weights_only=True), or no path: a clear startup error."
    import uvicorn
    from lesionseg.serve import create_app
    monkeypatch.delenv('LESIONSEG_WEIGHTS', raising=False)
    p = tmp_path/'model.pth'
    if case == 'not a weights file': p.write_bytes(b'this is not a torch file')
    if case == 'pickled code': torch.save({'model': torch.nn.Linear(2, 2)}, p) # a whole module: needs pickle to load
    srv = uvicorn.Server(uvicorn.Config(create_app(None if case == 'no weights at all' else p), host='127.0.0.1',
                                        port=_free_port(), log_level='error'))
    with pytest.raises(SystemExit) as e: srv.run()
    assert e.value.code == 3 and not srv.started
    err = capfd.readouterr().err
    says = {'not a weights file': str(p), 'pickled code': 'weights_only=True', 'no weights at all': 'LESIONSEG_WEIGHTS'}[case]
    assert 'lesionseg serve' in err and says in err, err[-2000:]

def test_uvicorn_factory_form_reads_the_environment(weights):
    "`uvicorn lesionseg.serve:create_app --factory` with LESIONSEG_WEIGHTS and a limit in the environment."
    port = _free_port(); url = f'http://127.0.0.1:{port}'
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'LESIONSEG_WEIGHTS': str(weights), 'LESIONSEG_MAX_MC': '7', 'LESIONSEG_TORCH_THREADS': '1'}
    with open(Path(weights).parent/f'factory-{port}.log', 'w+') as log:
        p = subprocess.Popen([sys.executable, '-m', 'uvicorn', 'lesionseg.serve:create_app', '--factory', '--port', str(port),
                              '--log-level', 'warning'], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.time() + 90
            while True:
                assert p.poll() is None, f'exited: {log.seek(0) or log.read()}'
                assert time.time() < deadline, 'no answer in 90 s'
                try:
                    if httpx.get(url + '/health', timeout=1).status_code == 200: break
                except httpx.TransportError: time.sleep(0.2)
            i = httpx.get(url + '/info').json()
            assert i['weights']['name'] == weights.name and i['limits']['max_mc'] == 7 and i['torch_threads'] == 1
            assert httpx.post(url + '/predict?mc=8', files={'file': ('x.jpg', JPG)}).status_code == 422
            assert httpx.post(url + '/predict?mc=7', files={'file': ('x.jpg', JPG)}, timeout=60).headers['content-type'] == 'image/png'
        finally:
            p.terminate(); p.wait(15)

# ---- good requests ---------------------------------------------------------------------------------------------------

def test_png_is_mask_and_heatmap_side_by_side(client, weights):
    r = client.post('/predict', files={'file': ('lesion.jpg', JPG, 'image/jpeg')})
    assert r.status_code == 200 and r.headers['content-type'] == 'image/png'
    png = _png_rgb(r.content)
    assert png.shape == (150, 400, 3)
    mask, heat = png[:, :200], png[:, 200:]
    assert set(np.unique(mask)) <= {0, 255} and (mask == mask[..., :1]).all() # black and white only
    assert abs((mask[..., 0] > 0).mean() - float(r.headers['x-lesion-fraction'])) < 1e-5
    # the same numbers as the Segmenter in this process (mc=0 is deterministic; threads may change the last bits)
    ref = _served(Segmenter.from_file(weights, device='cpu'), JPG)
    expected = side_by_side(ref['mask'], ref['uncertainty'])
    assert (np.abs(png.astype(int) - expected).max(-1) <= 2).mean() > 0.999
    # colours in RGB order: where the model is unsure the heatmap is red, where it is sure it is blue
    u = ref['uncertainty']
    assert (u > 0.95).sum() > 50 and (u < 0.25).sum() > 50, 'the fixture should give both certain and uncertain pixels'
    hot, cold = heat[u > 0.95].astype(int), heat[u < 0.25].astype(int)
    assert (hot[:, 0] > hot[:, 2]).mean() > 0.99, 'high uncertainty must be red-ish (R > B) in the RGB PNG'
    assert (cold[:, 2] > cold[:, 0]).mean() > 0.99, 'low uncertainty must be blue-ish (B > R)'

def test_heatmap_colours_are_matplotlibs_turbo_in_rgb(client, weights):
    "Known colours: each heatmap pixel is turbo(u) as matplotlib (an independent implementation, RGB) gives it."
    import matplotlib
    turbo = np.rint(matplotlib.colormaps['turbo'](np.arange(256))[:, :3]*255).astype(np.uint8)
    assert tuple(turbo[255]) == (122, 4, 3) and tuple(turbo[0]) == (48, 18, 59) # dark red at 1 bit, dark blue-violet at 0
    heat = _png_rgb(client.post('/predict', files={'file': ('lesion.jpg', JPG)}).content)[:, 200:]
    u = _served(Segmenter.from_file(weights, device='cpu'), JPG)['uncertainty']
    expected = turbo[np.rint(np.clip(u, 0, 1)*255).astype(int)]
    assert (heat == expected).all(-1).mean() > 0.99 # the server's threads may move a few pixels by one step of the LUT
    top = u >= 0.98 # the last 6 entries of the LUT: dark red, from (146, 11, 1) to (122, 4, 3) at 1 bit
    assert top.sum() > 10
    hot = heat[top].astype(int)
    assert ((122 <= hot[:, 0]) & (hot[:, 0] <= 146) & (hot[:, 1] <= 11) & (hot[:, 2] <= 3)).all(), \
        'most uncertain: dark red in RGB; BGR mixed up gives dark blue (3, 4, 122)'

def test_openapi_shows_the_png_and_json_answers(client):
    spec = client.get('/openapi.json').json()
    op = spec['paths']['/predict']['post']
    assert sorted(op['responses']['200']['content']) == ['application/json', 'image/png']
    assert {'400', '413', '415', '422', '503'} <= set(op['responses'])
    params = {p['name']: p['schema'] for p in op['parameters']}
    assert (params['mc']['minimum'], params['mc']['maximum']) == (0, MAX_MC)
    assert 'multipart/form-data' in op['requestBody']['content']
    assert set(spec['components']['schemas']['Prediction']['required']) >= {'mask_png', 'lesion_fraction', 'uncertainty_mean', 'uncertainty_max', 'review'}
    assert client.get('/docs').status_code == 200

def test_json_fields(client):
    r = client.post('/predict', files={'file': ('lesion.jpg', JPG)}, params={'mc': 8, 'tta': 'true', 'threshold': 0.4},
                    headers={'Accept': 'application/json'})
    assert r.status_code == 200 and r.headers['content-type'] == 'application/json', r.text
    j = r.json()
    assert (j['image_width'], j['image_height']) == (200, 150)
    assert set(j) == {'mask_png', 'width', 'height', 'image_width', 'image_height', 'lesion_fraction', 'uncertainty_mean', 'uncertainty_max', 'review',
                      'options', 'timing', 'arch'}
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(j['mask_png']))))
    assert mask.shape == (150, 200) == (j['height'], j['width']) and set(np.unique(mask)) <= {0, 255}
    assert abs((mask > 0).mean() - j['lesion_fraction']) < 1e-9
    assert j['options'] == {'mc': 8, 'tta': True, 'threshold': 0.4, 'postprocess': False}
    assert 0 <= j['uncertainty_mean'] <= j['uncertainty_max'] <= 1 and isinstance(j['review'], bool)
    t = j['timing']; assert 0 <= t['queue_s'] <= t['total_s'] and 0 < t['inference_s'] <= t['total_s']
    assert client.post('/predict?format=json', files={'file': ('x.jpg', JPG)}).json()['options']['threshold'] == 0.5
    assert client.post('/predict?format=png', files={'file': ('x.jpg', JPG)}, headers={'Accept': 'application/json'}).headers['content-type'] == 'image/png'

def test_mc_samples_vary_and_postprocess_keeps_one_component(client):
    a, b = (client.post('/predict?format=json&mc=20', files={'file': ('x.jpg', JPG)}).json() for _ in range(2))
    assert a['uncertainty_mean'] != b['uncertainty_mean'] # two independent draws of MC Dropout
    import cv2
    j = client.post('/predict?format=json&postprocess=true', files={'file': ('x.jpg', JPG)}).json()
    m = np.asarray(Image.open(io.BytesIO(base64.b64decode(j['mask_png'])))) > 0
    assert j['options']['postprocess'] and cv2.connectedComponents(m.astype(np.uint8))[0] - 1 <= 1

# ---- bad input: status, JSON detail, and the server carries on --------------------------------------------------------

BAD = {
    'no file': (dict(data={'x': '1'}), 422, 'file'),
    'empty file': (dict(files={'file': ('empty.jpg', b'')}), 400, 'empty.jpg: an empty file'),
    'not an image': (dict(files={'file': ('notes.txt', b'hello, I am a text file')}), 415, 'notes.txt: not an image'),
    'truncated JPEG': (dict(files={'file': ('cut.jpg', JPG[:len(JPG)//2])}), 400, 'cut.jpg: truncated'),
    'too many bytes': (dict(files={'file': ('big.png', b'\x89PNG' + os.urandom(MAX_BYTES + 1000))}), 413, f'max_bytes = {MAX_BYTES}'),
    'too many pixels': (dict(files={'file': ('big.png', _png_header(3000, 2000))}), 413, 'max_pixels'),
    'decompression bomb': (dict(files={'file': ('bomb.png', _png_header(100_000, 100_000))}), 413, 'bomb.png'),
    'floating-point mode': (dict(files={'file': ('f.tif', _encode(Image.fromarray(np.ones((8, 8), np.float32)), 'TIFF'))}), 415, 'mode F'),
    'mc above max_mc': (dict(files={'file': ('x.jpg', JPG)}, params={'mc': MAX_MC + 1}), 422, 'mc'),
    'negative mc': (dict(files={'file': ('x.jpg', JPG)}, params={'mc': -1}), 422, 'mc'),
    'threshold 1': (dict(files={'file': ('x.jpg', JPG)}, params={'threshold': 1}), 422, 'threshold'),
    'threshold 0': (dict(files={'file': ('x.jpg', JPG)}, params={'threshold': 0}), 422, 'threshold'),
    'threshold not a number': (dict(files={'file': ('x.jpg', JPG)}, params={'threshold': 'high'}), 422, 'threshold'),
    'tta not a bool': (dict(files={'file': ('x.jpg', JPG)}, params={'tta': 'maybe'}), 422, 'tta'),
    'format gif': (dict(files={'file': ('x.jpg', JPG)}, params={'format': 'gif'}), 422, 'format'),
}

def _detail_text(d) -> str: return d if isinstance(d, str) else ' '.join(str(e['loc'][-1]) + ': ' + e['msg'] for e in d)

@pytest.mark.parametrize('what', list(BAD))
def test_bad_input(client, server, what):
    kw, status, says = BAD[what]
    r = client.post('/predict', **kw)
    assert r.status_code == status, (what, r.status_code, r.text[:500])
    assert r.headers['content-type'] == 'application/json'
    assert says in _detail_text(r.json()['detail']), r.json()
    assert server.alive()

def test_too_many_bytes_without_content_length_is_cut_off_while_reading(client, server):
    "A chunked upload (no Content-Length): the server counts the bytes as they come and stops at max_bytes."
    sent = 0
    def body():
        nonlocal sent
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
        for _ in range(100): # up to 100 x 64 kB = 6.4 MB, far more than max_bytes
            sent += 65536; yield b'\xff'*65536
        yield b'\r\n--b--\r\n'
    r = client.post('/predict', content=body(), headers={'Content-Type': 'multipart/form-data; boundary=b'})
    assert 'content-length' not in r.request.headers
    assert r.status_code == 413 and f'max_bytes = {MAX_BYTES}' in r.json()['detail'], r.text[:300]
    assert server.alive()

# ---- load -----------------------------------------------------------------------------------------------------------

def _same(a, b) -> bool:
    "Two deterministic answers agree (to the last bits that thread scheduling may move)."
    return (a['width'] == b['width'] and a['options'] == b['options'] and abs(a['lesion_fraction'] - b['lesion_fraction']) < 1e-3
            and abs(a['uncertainty_mean'] - b['uncertainty_mean']) < 1e-4)

def _case(i, ref=None):
    "Request i of the load test: (kwargs, expected status, check of the response); `ref`: the answer to a deterministic request."
    k = i % 5
    if k == 0: return dict(files={'file': (f'{i}.jpg', JPG)}, params={'mc': 4}), 200, lambda r: _png_rgb(r.content).shape == (150, 400, 3)
    if k == 1: return (dict(files={'file': (f'{i}.jpg', JPG)}, params={'format': 'json', 'tta': 'true'}), 200,
                       lambda r: r.json()['options']['tta'] is True and (ref is None or _same(r.json(), ref)))
    if k == 2: return dict(files={'file': (f'{i}.txt', b'not an image')}), 415, lambda r: f'{i}.txt' in r.json()['detail']
    if k == 3: return dict(files={'file': (f'{i}.jpg', JPG[:len(JPG)//3])}), 400, lambda r: f'{i}.jpg: truncated' in r.json()['detail']
    return dict(files={'file': (f'{i}.jpg', JPG)}, params={'mc': 99}), 422, lambda r: r.json()['detail'][0]['loc'][-1] == 'mc'

def test_load_50_concurrent_mixed(server):
    pid = server.proc.pid
    with httpx.Client(base_url=server.url, timeout=120, limits=httpx.Limits(max_connections=60)) as c:
        for i in range(10): c.post('/predict', **_case(i)[0]) # warm up allocators and caches before measuring memory
        ref = c.post('/predict', **_case(1)[0]).json() # deterministic (TTA, no MC): alone, before the load
        rss0 = _rss_kb(pid)
        def one(i):
            kw, status, ok = _case(i, ref) # the deterministic ones must equal `ref` while MC requests run beside them
            r = c.post('/predict', **kw)
            return i, r.status_code, status, r.status_code == status and ok(r)
        with ThreadPoolExecutor(50) as ex: res = list(ex.map(one, range(50)))
        rss1 = _rss_kb(pid)
    wrong = [r for r in res if not r[3]]
    assert not wrong, f'wrong answers (i, got, expected): {wrong}'
    assert server.alive()
    grew_mb = (rss1 - rss0)/1024
    print(f'server RSS {rss0/1024:.0f} MB -> {rss1/1024:.0f} MB after 50 concurrent requests')
    assert grew_mb < 150, f'the server grew by {grew_mb:.0f} MB over 50 requests (bound: 150 MB; about 10 MB measured)'

@pytest.fixture
def busy_server(weights):
    s = ThreadServer(weights, concurrency=1, max_queue=0, max_mc=50)
    yield s
    s.stop()

def test_busy_beyond_the_queue_is_503(busy_server):
    "concurrency=1, max_queue=0: while one request runs, the others are refused at once with 503 and Retry-After."
    s = busy_server
    big = _encode(synth_lesion(4, (768, 1024))[0], 'JPEG', quality=90)
    with httpx.Client(base_url=s.url, timeout=120, limits=httpx.Limits(max_connections=10)) as c:
        def one(_): return c.post('/predict', files={'file': ('big.jpg', big)}, params={'mc': 50, 'tta': 'true'})
        with ThreadPoolExecutor(8) as ex: rs = list(ex.map(one, range(8)))
    codes = sorted(r.status_code for r in rs)
    assert set(codes) == {200, 503}, codes
    busy = next(r for r in rs if r.status_code == 503)
    assert busy.headers['retry-after'] == '1' and 'busy' in busy.json()['detail']
    assert s.alive()
