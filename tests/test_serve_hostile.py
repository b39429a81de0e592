"""The service against a hostile client, on a real socket on loopback: work bounded by what the model needs, no 5xx
on images it accepts, connections that always survive an error, timeouts, a cap on connections, an allow-list of
formats, nothing about the host in its answers. Every input is crafted here, small, in the test.

Servers run `lesionseg.serve.serve` (uvicorn with the service's own protocol guard) over a tiny random Swin-UPerNet
(64 x 64), in a subprocess when the test needs a process of its own (memory, open files), else in a thread."""
import io, json, os, socket, struct, subprocess, sys, threading, time, zlib
from pathlib import Path
import numpy as np, pytest, torch
import httpx
from PIL import Image

os.environ.setdefault('HF_HUB_OFFLINE', '1')
from lesionseg.data import synth_lesion
from lesionseg.weights import save_weights
from lesionseg.upernet import SwinUPerNet, tiny_config

sys.path.insert(0, str(Path(__file__).parent))
from test_serve import Server, _encode, _free_port, _png_header

JPG = _encode(synth_lesion(3, (150, 200))[0], 'JPEG', quality=90)
pytestmark = pytest.mark.xdist_group('serve-hostile') # one worker starts this file's servers, once

@pytest.fixture(scope='module')
def weights(tmp_path_factory):
    "Weights whose summary names absolute paths (as `train` writes them: the data folder, the weights file)."
    torch.manual_seed(0)
    model = SwinUPerNet(**tiny_config)
    d = tmp_path_factory.mktemp('hostile')
    return save_weights(d/'tiny.pth', model, 'swin-upernet', 64,
                        summary={'epochs': 0, 'data': str(d/'secret-cache'/'isic2018-256'), 'weights': str(d/'tiny.pth')})

def _kb(pid:int, field:str) -> int:
    for line in Path(f'/proc/{pid}/status').read_text().splitlines():
        if line.startswith(field + ':'): return int(line.split()[1])
    raise RuntimeError(f'no {field} for pid {pid}')

def _flat_png(w:int, h:int, rgb=(180, 120, 100)) -> bytes:
    "A complete w x h RGB PNG of one colour, compressed row by row (a few kB for millions of pixels; no big array here)."
    chunk = lambda t, d: struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))
    row, z, parts = b'\x00' + bytes(rgb)*w, zlib.compressobj(9), []
    for _ in range(h): parts.append(z.compress(row))
    parts.append(z.flush())
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0))
            + chunk(b'IDAT', b''.join(parts)) + chunk(b'IEND', b''))

@pytest.fixture(scope='module')
def server(weights):
    "The service with its default limits (50 MP images, 20 MB bodies), two images at a time."
    s = Server(weights, concurrency=2)
    try: s.wait_ready(); yield s
    finally: s.stop()

# ---- 1. a tiny upload buys only what the model needs -------------------------------------------------------------------

def test_a_small_png_claiming_49_megapixels_costs_what_the_model_needs(server):
    "A 7000 x 7000 PNG of a few kB (under the 50 MP cap): answered at a capped output size, in bounded memory."
    png = _flat_png(7000, 7000)
    assert len(png) < 200_000
    pid = server.proc.pid
    with httpx.Client(base_url=server.url, timeout=120) as c:
        c.post('/predict', files={'file': ('warm.jpg', JPG)}) # allocators warm before the peak is read
        peak0 = _kb(pid, 'VmHWM')
        r = c.post('/predict', files={'file': ('big.png', png)}, params={'format': 'json'})
        assert r.status_code == 200, r.text[:500]
        j = r.json()
        limits = c.get('/info').json()['limits']
        assert (j['image_width'], j['image_height']) == (7000, 7000), j
        assert j['width']*j['height'] <= limits['max_output_pixels'] and j['width'] == j['height'], j
        r = c.post('/predict', files={'file': ('big.png', png)}) # the PNG answer: mask | heatmap at the output size
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (2*j['width'], j['height'])
    grew = (_kb(pid, 'VmHWM') - peak0)/1024
    print(f'peak RSS grew by {grew:.0f} MB for a 7000 x 7000 upload')
    assert grew < 800, f'a {len(png)} byte upload raised the peak memory by {grew:.0f} MB (1.7 GB before outputs were capped)'

def test_extreme_aspect_ratios_are_refused_and_the_connection_lives_on(server):
    "A 600000 x 2 and a 2 x 1100000 PNG (a few kB, far under the pixel cap) cannot be answered as images: 422 naming the"
    " reason, never 500, and the next request on the same keep-alive connection is served."
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for rnd in range(10):
            for w, h in ((600_000, 2), (2, 1_100_000)):
                for fmt in ('png', 'json'):
                    r = c.post('/predict', files={'file': (f'strip-{w}x{h}.png', _flat_png(w, h))}, params={'format': fmt})
                    assert r.status_code == 422, (rnd, w, h, fmt, r.status_code, r.text[:300])
                    assert 'aspect' in r.json()['detail'] and f'strip-{w}x{h}.png' in r.json()['detail'], r.json()
            r = c.post('/predict', files={'file': ('ok.jpg', JPG)})
            assert r.status_code == 200, (rnd, r.status_code)

def test_reduced_jpeg_decoding_gives_the_same_mask_size(server):
    "A large JPEG is decoded reduced (libjpeg's DCT scaling) for the model; the answer is still at the picture's size."
    big = _encode(synth_lesion(5, (1536, 2048))[0], 'JPEG', quality=85)
    with httpx.Client(base_url=server.url, timeout=60) as c:
        j = c.post('/predict', files={'file': ('big.jpg', big)}, params={'format': 'json'}).json()
    assert (j['width'], j['height'], j['image_width'], j['image_height']) == (2048, 1536, 2048, 1536), j

# ---- 2. an error never breaks the connection it came on -----------------------------------------------------------------

class ThreadServer:
    "`serve`'s uvicorn server in a thread of this process, so that a test can reach into the app."
    def __init__(self, weights, **kw):
        from lesionseg.serve import create_app, server_config
        import uvicorn
        port = _free_port(); self.url = f'http://127.0.0.1:{port}'
        opts = {k: kw.pop(k) for k in ('header_timeout', 'keep_alive', 'max_connections') if k in kw}
        self.app = create_app(weights, **kw)
        self.srv = uvicorn.Server(server_config(self.app, host='127.0.0.1', port=port, log_level='warning', **opts))
        self.th = threading.Thread(target=self.srv.run, daemon=True); self.th.start()
        deadline = time.time() + 60
        while not self.srv.started:
            assert self.th.is_alive() and time.time() < deadline, 'the in-thread server did not start'
            time.sleep(0.05)
        self.port = port
    def stop(self): self.srv.should_exit = True; self.th.join(30)

@pytest.fixture
def thread_server(weights):
    made = []
    def make(**kw): made.append(ThreadServer(weights, **kw)); return made[-1]
    yield make
    for s in made: s.stop()

def test_an_unforeseen_error_is_a_500_that_leaves_the_connection_usable(thread_server):
    s = thread_server()
    def broken(*a, **k): raise RuntimeError('a bug in the model code')
    s.app.state.seg.predict = broken
    with httpx.Client(base_url=s.url, timeout=30) as c:
        for i in range(10):
            r = c.post('/predict', files={'file': ('x.jpg', JPG)})
            assert r.status_code == 500 and 'internal error' in r.json()['detail'], (i, r.status_code, r.text[:300])
            assert c.get('/health').status_code == 200 # the same keep-alive connection, right after
    del s.app.state.seg.predict

# ---- 3. timeouts and a cap on connections --------------------------------------------------------------------------------

def _closed_within(sock:socket.socket, seconds:float, trickle:bytes=b'') -> float | None:
    "Seconds until the server closed `sock`, sending `trickle` one byte per 0.2 s meanwhile; None if still open after `seconds`."
    t0, i = time.monotonic(), 0
    sock.settimeout(0.2)
    while time.monotonic() - t0 < seconds:
        try:
            if i < len(trickle): sock.send(trickle[i:i+1]); i += 1
            if not sock.recv(65536): return time.monotonic() - t0 # an answer (408) may come first; then the close
        except socket.timeout: continue
        except (ConnectionResetError, BrokenPipeError): return time.monotonic() - t0
    return None

def test_idle_and_trickling_connections_are_closed(thread_server):
    s = thread_server(header_timeout=1, keep_alive=1, body_timeout=2)
    with socket.create_connection(('127.0.0.1', s.port)) as a: # connects, sends nothing
        assert _closed_within(a, 10) is not None, 'an idle connection was held open'
    with socket.create_connection(('127.0.0.1', s.port)) as b: # headers at 5 bytes a second: every byte resets uvicorn's own timer
        assert _closed_within(b, 10, trickle=b'GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ' + b'a'*200) is not None, 'trickled headers held it'
    head = (b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n'
            b'Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name="file"; filename="slow.jpg"\r\n\r\n')
    with socket.create_connection(('127.0.0.1', s.port)) as c: # the body at 5 bytes a second
        c.sendall(head)
        assert _closed_within(c, 15, trickle=b'\xff'*1000) is not None, 'a trickling upload was held'
    assert httpx.get(s.url + '/health', timeout=10).status_code == 200

def test_slow_body_gets_408(thread_server):
    s = thread_server(body_timeout=1)
    head = (b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n'
            b'Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name="file"; filename="slow.jpg"\r\n\r\n')
    data = b''
    with socket.create_connection(('127.0.0.1', s.port), timeout=10) as c:
        c.sendall(head + b'\xff'*100)
        while chunk := c.recv(65536): data += chunk # the answer, then the close
    assert b'body_timeout' in data

def test_many_idle_sockets_cannot_exhaust_the_open_files(weights):
    "The server process limited to 256 open files; 300 sockets connect and say nothing: /health is always answered (503 at the"
    " connection cap), by 200 once the idle heads are late (header_timeout), and the log stays small."
    s = Server(weights, prelude='import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))\n',
               header_timeout=2, max_connections=100)
    socks = []
    try:
        s.wait_ready()
        for _ in range(300):
            try: socks.append(socket.create_connection(('127.0.0.1', s.port), timeout=5))
            except OSError: pass
        got = []
        for _ in range(12): # while they are held: answered at once, 503 while the cap is reached, 200 once the heads are late
            try: got.append(httpx.get(s.url + '/health', timeout=5).status_code)
            except httpx.TransportError as e: got.append(type(e).__name__)
            time.sleep(0.5)
        assert set(got) <= {200, 503} and got[-4:] == [200]*4, f'/health while 300 idle sockets were open: {got}'
        assert s.alive()
        assert len(s.output()) < 200_000, s.output()[-2000:]
    finally:
        for k in socks: k.close()
        s.stop()

def test_slow_request_beyond_its_deadline_is_503(thread_server):
    s = thread_server(concurrency=1, request_timeout=1)
    seg = s.app.state.seg; real = seg.predict
    def slow(*a, **k): time.sleep(2.5); return real(*a, **k)
    seg.predict = slow
    with httpx.Client(base_url=s.url, timeout=60) as c1, httpx.Client(base_url=s.url, timeout=60) as c2:
        first = threading.Thread(target=lambda: c1.post('/predict', files={'file': ('a.jpg', JPG)})); first.start()
        time.sleep(0.5)
        r = c2.post('/predict', files={'file': ('b.jpg', JPG)}) # waits for the slot longer than request_timeout
        first.join()
    del seg.predict
    assert r.status_code == 503 and 'request_timeout' in r.json()['detail'], r.text[:300]

def test_requests_whose_clients_left_are_not_computed(thread_server):
    s = thread_server(concurrency=1)
    seg = s.app.state.seg; real = seg.predict; calls = []
    def counted(*a, **k):
        calls.append(1); time.sleep(1.5 if len(calls) == 1 else 0); return real(*a, **k)
    seg.predict = counted
    body = (b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'
            + JPG + b'\r\n--b--\r\n')
    req = (b'POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n'
           + f'Content-Length: {len(body)}\r\n\r\n'.encode() + body)
    with httpx.Client(base_url=s.url, timeout=60) as c:
        first = threading.Thread(target=lambda: c.post('/predict', files={'file': ('a.jpg', JPG)})); first.start()
        time.sleep(0.3)
        for _ in range(5): # queued behind the first, then the client goes away
            with socket.create_connection(('127.0.0.1', s.port)) as k: k.sendall(req); time.sleep(0.05)
        first.join()
        time.sleep(0.5)
        info = c.get('/info').json()
    del seg.predict
    assert len(calls) == 1, f'{len(calls) - 1} requests of clients that had left were computed'
    assert info['requests']['dropped'] == 5, info['requests']

# ---- 4. formats, and what the answers say about the host ----------------------------------------------------------------

EPS = (b'%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n%%EndComments\n'
       b'newpath 0 0 moveto 8 0 lineto 8 8 lineto closepath fill\nshowpage\n%%EOF\n')

def _other_formats() -> dict:
    img = Image.fromarray(synth_lesion(2, (32, 48))[0])
    out = {'eps': EPS}
    for fmt, ext in (('ICO', 'ico'), ('PCX', 'pcx'), ('TGA', 'tga'), ('PPM', 'ppm'), ('SGI', 'sgi'), ('IM', 'im')):
        buf = io.BytesIO(); img.save(buf, fmt); out[ext] = buf.getvalue()
    return out

def _allowed_formats() -> dict:
    img = Image.fromarray(synth_lesion(2, (32, 48))[0])
    out = {}
    for fmt, ext in (('JPEG', 'jpg'), ('PNG', 'png'), ('TIFF', 'tif'), ('BMP', 'bmp'), ('WEBP', 'webp'), ('GIF', 'gif')):
        buf = io.BytesIO(); img.save(buf, fmt); out[ext] = buf.getvalue()
    return out

def test_only_the_allowed_formats_are_decoded(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for ext, data in _allowed_formats().items():
            r = c.post('/predict', files={'file': (f'x.{ext}', data)})
            assert r.status_code == 200, (ext, r.status_code, r.text[:300])
        for ext, data in _other_formats().items():
            r = c.post('/predict', files={'file': (f'x.{ext}', data)})
            assert r.status_code == 415, (ext, r.status_code, r.text[:300])
            assert 'JPEG, PNG, TIFF, BMP, WebP or GIF' in r.json()['detail'] and f'x.{ext}' in r.json()['detail'], r.json()

def test_read_image_has_the_same_allow_list():
    from lesionseg.inference import ImageError, read_image
    for ext, data in _allowed_formats().items(): assert read_image(data).shape == (32, 48, 3), ext
    for ext, data in _other_formats().items():
        with pytest.raises(ImageError, match='JPEG, PNG, TIFF, BMP, WebP or GIF'): read_image(data, name=f'x.{ext}')

def test_errors_carry_no_object_reprs(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for name, data in (('notes.txt', b'hello, I am text'), ('cut.jpg', JPG[:len(JPG)//2]), ('x.eps', EPS),
                           ('bad.png', _png_header(40, 40)), ('junk.gif', b'GIF89a' + os.urandom(64))):
            d = c.post('/predict', files={'file': (name, data)}).json()['detail']
            assert ' at 0x' not in d and '<_io.' not in d and 'object at' not in d, (name, d)

def test_info_names_files_without_paths(server, weights):
    with httpx.Client(base_url=server.url, timeout=60) as c: info = c.get('/info').json()
    text = json.dumps(info)
    assert str(Path(weights).parent) not in text and 'secret-cache' not in text, text[:2000]
    assert info['weights']['name'] == 'tiny.pth' and len(info['weights']['sha256']) == 64 and 'path' not in info['weights']

def test_predict_with_a_trailing_slash_is_predict(server):
    with httpx.Client(base_url=server.url, timeout=60, follow_redirects=False) as c:
        r = c.post('/predict/', files={'file': ('x.jpg', JPG)}, headers={'Host': 'evil.example'})
        assert r.status_code == 200 and r.headers['content-type'] == 'image/png', (r.status_code, r.headers)
        assert 'location' not in r.headers
        r = c.get('/health/', headers={'Host': 'evil.example'})
        assert 'evil.example' not in r.headers.get('location', ''), r.headers
