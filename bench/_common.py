"""What the training benchmarks share: the shared data's place, defaults per device, the machine's record, the JSON write."""
import json, os, platform
from pathlib import Path
import torch

SHARED = Path(__file__).resolve().parents[2]/'shared'/'data'/'isic2018-task1-train-256x192'

def device_defaults(args, table) -> tuple[torch.device, bool]:
    "The device (CUDA when there is one) and, for each (name, on CUDA, on CPU) of `table`, the default of an option left unset."
    dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu'); gpu = dev.type == 'cuda'
    for k, g, c in table:
        if getattr(args, k) is None: setattr(args, k, g if gpu else c)
    return dev, gpu

def load1() -> float: return round(os.getloadavg()[0], 2)

def machine(gpu:bool, load_start:float) -> dict:
    "The machine and its 1-minute load average at the start and now (other work on a shared machine shows here)."
    return dict(device=torch.cuda.get_device_name() if gpu else 'cpu', cpus=len(os.sched_getaffinity(0)),
                load_avg_1min_start_end=[load_start, load1()], torch=torch.__version__, python=platform.python_version(),
                processor=platform.processor())

def write_json(out, res:dict) -> Path:
    "Write `res` to `out` through a temporary file and a rename: never half a file."
    out = Path(out); out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix('.tmp'); tmp.write_text(json.dumps(res, indent=2) + '\n'); os.replace(tmp, out)
    return out
