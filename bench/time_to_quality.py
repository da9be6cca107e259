"""Time to quality: flowvae's Glow / hybrid against normflows' Glow of the same size, trained side by side.

    python bench/time_to_quality.py --minutes 15 --models normflows_glow,flowvae_glow --out runs/ttq
    python bench/time_to_quality.py --minutes 15 --models normflows_glow,flowvae_hybrid --out runs/ttq
    python bench/time_to_quality.py --max-steps 250 --eval-images 2000 --recipe today ...   # a short probe

Every model trains in its own process, all started at the same time, one thread each (``--threads``),
on full Fashion-MNIST (Debian's /usr/share/datasets/fashion-mnist, or ``--data-root``), 28x28, 8-bit,
uniform dequantisation, 2 levels x 8 steps x 128 channels, batch 64, for the same budget of
training-step wall-clock seconds (``--minutes``; evaluation is not counted) or the same number of
steps (``--max-steps``). Then each is scored on the test set (all 10,000 images by default): the
bits/dim of ``-log p(y)`` under one uniform dequantisation draw per image, i.e. flowvae's
``elbo_bpd`` (exact for a Glow, a bound for the hybrid) and the same quantity for normflows.

* ``normflows_glow``: normflows' own blocks (bench/benchmark.py builds it), trained here with the recipe
  of its Glow example: Adam 1e-3, 200 linear warm-up steps, raw weights for evaluation.
* ``flowvae_glow`` / ``flowvae_hybrid``: ``flowvae train --config configs/fashion_mnist.yaml`` with the
  recipe ``--recipe`` (a config: ``today`` is the recipe configs/fashion_mnist.yaml shipped
  with before this comparison, ``new`` the one it ships with now).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

RECIPES = {"today": "configs/fashion_mnist_adamax.yaml", "new": "configs/fashion_mnist.yaml"}  # recipe -> config

LN2 = math.log(2.0)


def flowvae_cmd(kind: str, out: Path, a) -> list[str]:
    overrides = [f"model.type={'glow' if kind == 'flowvae_glow' else 'hybrid'}", f"train.threads={a.threads}",
                 "train.eval_every=0", "train.checkpoint_every=0", f"train.eval_images={a.eval_images}",
                 f"train.max_minutes={a.minutes}", f"train.max_steps={a.max_steps or 0}",
                 f"train.seed={a.seed}"]
    if a.data_root:
        overrides.append(f"data.root={a.data_root}")
    overrides += a.override
    return [sys.executable, "-m", "flowvae", "train", "--config", str(ROOT / RECIPES[a.recipe]),
            "--out", str(out), "--no-progress", "--device", "cpu", *overrides]


def normflows_child(out: Path, a) -> dict:
    """Train normflows' Glow (Adam 1e-3, 200 warm-up steps, raw weights) and score it on the test set."""
    from benchmark import NormflowsAdapter, build_normflows_glow

    from flowvae.config import DataConfig, ModelConfig
    from flowvae.data import iterate_batches, load_dataset

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    data = DataConfig(dataset="fashion_mnist", root=a.data_root)
    train_ds, test_ds = load_dataset(data, ModelConfig(), "train"), load_dataset(data, ModelConfig(), "test")
    model = NormflowsAdapter(build_normflows_glow(2, 8, 128))
    g = torch.Generator().manual_seed(a.seed)
    model.initialize(train_ds[torch.randperm(len(train_ds), generator=g)[:512]][0])  # ActNorm's data init
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 200))
    budget = a.minutes * 60 if a.minutes > 0 else math.inf
    max_steps = a.max_steps or math.inf
    step, seconds, epoch = 0, 0.0, 0
    model.train()
    while step < max_steps and seconds < budget:
        for x, _ in iterate_batches(train_ds, 64, shuffle=True, seed=a.seed, epoch=epoch, drop_last=True):
            tic = time.perf_counter()
            loss = model.loss(x)
            opt.zero_grad(set_to_none=True)
            if torch.isfinite(loss):
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 50.0)
                opt.step()
                sched.step()
            step += 1
            seconds += time.perf_counter() - tic
            if step >= max_steps or seconds >= budget:
                break
        epoch += 1
    model.eval()
    n = len(test_ds) if not a.eval_images else min(a.eval_images, len(test_ds))
    total = 0.0
    torch.manual_seed(a.seed + 1)
    with torch.no_grad():
        for start in range(0, n, 256):
            x = test_ds[torch.arange(start, min(n, start + 256))][0]
            total += model.bpd(x).double().sum().item()
    res = {"steps": step, "train_minutes": round(seconds / 60, 2), "test_bpd": round(total / n, 4), "images": n}
    (out / "result.json").write_text(json.dumps(res, indent=2))
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="normflows_glow,flowvae_glow", help="normflows_glow, flowvae_glow, flowvae_hybrid")
    ap.add_argument("--minutes", type=float, default=15.0, help="training-step wall-clock budget per model (0: none)")
    ap.add_argument("--max-steps", type=int, default=0, help="stop at this many steps (0: the time budget only)")
    ap.add_argument("--recipe", default="new", choices=sorted(RECIPES))
    ap.add_argument("--override", action="append", default=[], help="extra flowvae train.* / model.* override")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-images", type=int, default=0, help="test images scored (0: all 10,000)")
    ap.add_argument("--data-root", default="")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/time_to_quality")
    ap.add_argument("--_normflows", dest="normflows", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    out = Path(a.out)
    if a.normflows:
        print(json.dumps(normflows_child(out / "normflows_glow", a)))
        return {}
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), PYTHONPATH=str(ROOT))
    procs = {}
    for kind in [k for k in a.models.split(",") if k]:
        d = out / kind
        if d.exists() and any(d.iterdir()):
            raise SystemExit(f"{d} is not empty: choose another --out")
        d.mkdir(parents=True, exist_ok=True)
        if kind == "normflows_glow":
            cmd = [sys.executable, __file__, "--_normflows", *(argv if argv is not None else sys.argv[1:])]
        else:
            cmd = flowvae_cmd(kind, d, a)
        log = open(d / "train.log", "w")
        procs[kind] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT), log)
        print(f"started {kind}: {' '.join(cmd)}", flush=True)
    results = {}
    for kind, (p, log) in procs.items():
        rc = p.wait()
        log.close()
        if rc:
            raise SystemExit(f"{kind} failed (exit {rc}); see {out / kind / 'train.log'}")
        if kind == "normflows_glow":
            results[kind] = json.loads((out / kind / "result.json").read_text())
        else:
            m = json.loads((out / kind / "train_metrics.json").read_text())
            results[kind] = {"steps": m["step"], "train_minutes": m["train_minutes"], "test_bpd": round(m["elbo_bpd"], 4),
                             "images": m["images"], "recipe": a.recipe}
    summary = {"setup": {"minutes": a.minutes, "max_steps": a.max_steps, "threads": a.threads, "recipe": RECIPES[a.recipe],
                         "override": a.override, "seed": a.seed}, "results": results}
    if "normflows_glow" in results:
        ref = results["normflows_glow"]["test_bpd"]
        summary["below_normflows"] = {k: round(ref - r["test_bpd"], 4) for k, r in results.items() if k != "normflows_glow"}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    for kind, r in results.items():
        print(f"{kind}: test bpd {r['test_bpd']:.4f} on {r['images']} images after {r['steps']} steps "
              f"({r['train_minutes']} min of training)")
    for kind, d in summary.get("below_normflows", {}).items():
        print(f"{kind}: {d:+.4f} bpd below normflows_glow")
    return summary


if __name__ == "__main__":
    main()
