"""Training speed of the quickstart model under CPU contention, per thread setting (README, "A busy machine").

    python bench/threads.py --burners 2 --seconds 30                  # torch's default, 1 thread, 2 threads + PASSIVE
    python bench/threads.py --burners 0 --settings default,1

Each setting runs in a fresh process (OpenMP reads OMP_WAIT_POLICY once, at start): build
configs/quickstart.yaml's model, initialise it on 128 images, then count Adamax training steps
(batch 64) finished in a window of ``--seconds`` wall-clock seconds. ``--burners K`` starts K busy-loop
processes for the duration of each measurement (the other jobs of a shared machine) and ends them after.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"default": ("-1", {}), "1": ("1", {}), "2": ("2", {}), "2-passive": ("2", {"OMP_WAIT_POLICY": "PASSIVE"})}

CHILD = r"""
import signal, sys, time, torch
threads, seconds = int(sys.argv[1]), float(sys.argv[2])
if threads > 0:
    torch.set_num_threads(threads)
from flowvae import FlowVAE, load_config
from flowvae.data import load_dataset
cfg = load_config("configs/quickstart.yaml")
ds = load_dataset(cfg.data, cfg.model, "train")
torch.manual_seed(0)
m = FlowVAE.from_config(cfg.model)
m.initialize(ds[torch.arange(128)][0])
opt = torch.optim.Adamax(m.parameters(), lr=1e-3)
steps, start = 0, time.perf_counter()
def report(*_):
    el = time.perf_counter() - start
    print(f"RESULT {torch.get_num_threads()} {steps} {el:.2f}", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, report)
while time.perf_counter() - start < seconds:
    x = ds[torch.randint(0, len(ds), (64,))][0]
    loss = m.loss(x)["loss"]
    opt.zero_grad(); loss.backward(); opt.step()
    steps += 1
report()
"""


def measure(setting: str, seconds: float, burners: int) -> dict:
    threads, extra = SETTINGS[setting]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update(extra, PYTHONPATH=str(ROOT))
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(burners)]
    try:
        p = subprocess.run([sys.executable, "-c", CHILD, threads, str(seconds)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=seconds * 3 + 120)
    except subprocess.TimeoutExpired:
        return {"setting": setting, "burners": burners, "steps": None, "note": "timed out before the window ended"}
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT")), None)
    if line is None:
        return {"setting": setting, "burners": burners, "steps": None, "note": p.stderr.strip()[-300:]}
    _, used, steps, el = line.split()
    return {"setting": setting, "threads": int(used), "burners": burners, "steps": int(steps), "seconds": float(el),
            "steps_per_s": round(int(steps) / float(el), 3), "load_1min": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--settings", default="default,1,2-passive", help=f"comma list of {', '.join(SETTINGS)}")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--burners", type=int, default=2)
    ap.add_argument("--out", help="JSON file for the results")
    a = ap.parse_args()
    results = []
    for s in a.settings.split(","):
        r = measure(s.strip(), a.seconds, a.burners)
        results.append(r)
        print(json.dumps(r), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
