"""Preprocessing speed: plain full decode + INTER_AREA vs lesionseg's reduced-decode `load_resized`, and `prepare`.

Run from the repository root:  python bench/preprocess_speed.py [--n 24] [--out bench/results/preprocess_speed.json]

Synthesises `n` dermoscopy-like JPEGs of 3008x2000 (quality 90) with 0/255 PNG masks in a temporary folder, then
measures images/s, single-threaded (one Python thread, cv2.setNumThreads(1)), of
  (a) plain: cv2.imread (full decode) + cv2.resize(INTER_AREA) to size x size + BGR->RGB,
  (b) lesionseg.preprocessing.load_resized (reduced JPEG decode + INTER_AREA), the function `prepare` uses,
interleaved over `--rounds` rounds (median reported), plus the quality of (b) against (a) (PSNR, max abs diff),
and the whole `prepare` (masks read, checked and resized too, PNGs written) serially and with its default workers.
"""
import argparse, json, os, platform, sys, tempfile, time
from pathlib import Path
import numpy as np, cv2
from fastcore.basics import defaults
from lesionseg.preprocessing import load_resized, prepare
from lesionseg.data import make_synthetic

def plain(path, size):
    img = cv2.imread(str(path))
    return cv2.cvtColor(cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)

def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64))**2)
    return float('inf') if mse == 0 else float(10*np.log10(255**2/mse))

def rate(f, paths):
    t = time.perf_counter()
    for p in paths: f(p)
    return len(paths)/(time.perf_counter() - t)

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n', type=int, default=24, help='number of synthetic images')
    ap.add_argument('--size', type=int, default=256, help='target size (square)')
    ap.add_argument('--rounds', type=int, default=3, help='interleaved timing rounds')
    ap.add_argument('--out', default='bench/results/preprocess_speed.json')
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        src, t0 = Path(d)/'src', time.perf_counter()
        make_synthetic(src, n=a.n, size=(2000, 3008), seed=100, quality=90, noise=8) # noise: JPEGs the size of real 6 MP photographs
        ids = [f'SYN_{i:07d}' for i in range(a.n)]
        synth_s = time.perf_counter() - t0
        paths = [src/'images'/f'{i}.jpg' for i in ids]
        mb = np.mean([p.stat().st_size for p in paths])/1e6
        nthreads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        for p in paths: p.read_bytes() # warm the page cache for both
        ra, rb = [], []
        for _ in range(a.rounds):
            ra.append(rate(lambda p: plain(p, a.size), paths))
            rb.append(rate(lambda p: load_resized(p, a.size), paths))
        qual = [psnr(load_resized(p, a.size), plain(p, a.size)) for p in paths]
        maxdiff = max(int(np.abs(load_resized(p, a.size).astype(int) - plain(p, a.size)).max()) for p in paths)
        cv2.setNumThreads(nthreads)
        t = time.perf_counter(); prepare(src, Path(d)/'out0', size=a.size, workers=0, progress=False)
        prep_serial = a.n/(time.perf_counter() - t)
        t = time.perf_counter(); prepare(src, Path(d)/'out1', size=a.size, progress=False)
        prep_par = a.n/(time.perf_counter() - t)
        t = time.perf_counter(); prepare(src, Path(d)/'out1', size=a.size, progress=False)
        rerun_s = time.perf_counter() - t
    a_ips, b_ips = float(np.median(ra)), float(np.median(rb))
    res = dict(
        benchmark='preprocess_speed',
        command='python ' + ' '.join(sys.argv),
        data=dict(n_images=a.n, image_hw=[2000, 3008], jpeg_quality=90, mean_jpeg_mb=round(mb, 3),
                  kind='synthetic dermoscopy-like (lesionseg.data.make_synthetic, noise=8)', synth_seconds=round(synth_s, 1)),
        target_hw=[a.size, a.size],
        single_thread=dict(
            plain_full_decode_inter_area_img_per_s=round(a_ips, 2),
            load_resized_reduced_decode_img_per_s=round(b_ips, 2),
            speedup=round(b_ips/a_ips, 2), rounds=a.rounds,
            plain_rounds=[round(x, 2) for x in ra], load_resized_rounds=[round(x, 2) for x in rb]),
        quality_load_resized_vs_plain=dict(psnr_db_mean=round(float(np.mean(qual)), 2), psnr_db_min=round(float(np.min(qual)), 2),
                                           max_abs_diff=maxdiff),
        prepare=dict(note='images + masks: header read, 6 MP mask PNG decoded and checked, both resized, two PNGs written',
                     serial_workers0_img_per_s=round(prep_serial, 2),
                     default_workers=defaults.cpus, default_workers_img_per_s=round(prep_par, 2),
                     rerun_all_cached_seconds=round(rerun_s, 3)),
        machine=dict(device='cpu', cpu_count=os.cpu_count(),
                     cpus_usable=len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count(),
                     cv2_version=cv2.__version__, cv2_threads_default=nthreads, processor=platform.processor() or platform.machine(),
                     python=platform.python_version(), platform=platform.platform()),
    )
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f'.{out.name}.tmp'); tmp.write_text(json.dumps(res, indent=2) + '\n'); os.replace(tmp, out)
    print(json.dumps(res, indent=2))

if __name__ == '__main__': main()
