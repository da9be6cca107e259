"""The training roofline: FLOP/s that a training step achieves, against a plain GEMM measured in the same run.

    python bench/roofline.py --out bench/results/roofline/cpu.json                  # the docs' CPU table (1 thread)
    python bench/roofline.py --rounds 3 --profile flowvae_hybrid --out ...    # plus where the time goes

At the Fashion-MNIST config of bench/benchmark.py (28x28, 2 levels x 8 steps x 128 channels, batch 64),
for flowvae's Glow, its hybrid and normflows' Glow of the same size, in fp32 and bf16 autocast:

* FLOPs per training image: one forward + backward step counted by ``torch.utils.flop_counter.FlopCounterMode``
  (matrix products and convolutions, forward and backward; what the hardware's matrix units can speed up).
  The optimiser step and elementwise work are not counted: they are the overhead the fraction exposes.
* train img/s: bench/benchmark.py's timing (forward + backward + Adamax step), median of interleaved rounds.
* achieved FLOP/s = FLOPs per image x img/s, as a fraction of two plain GEMMs timed in the same rounds, on the
  same thread count and dtype: a 1024 x 1024 x 1024 product (the attainable peak of this machine) and one of
  the model's own shape (pixels x hidden x hidden: the coupling networks' 1x1 layer at the finest level).

bench/gpu_check.py uses the same functions at CIFAR-10 scale on a GPU.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
GEMM_CATEGORY = ("mm", "addmm", "bmm", "matmul", "linear", "conv", "baddbmm", "_convolution")


# ----------------------------------------------------------------------------- measurements
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_flops(bench, x: torch.Tensor) -> float:
    """FLOPs of one forward + backward step of ``bench`` (a bench/benchmark.py Bench) on the batch ``x``,
    counted by torch's FlopCounterMode; gradients are cleared afterwards."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        with bench.autocast:
            loss = bench.m.loss(x)
        loss.backward()
    bench.opt.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def gemm_rate(m: int, k: int, n: int, dtype: torch.dtype, device: torch.device, seconds: float = 0.5) -> float:
    """FLOP/s of ``[m, k] @ [k, n]`` in ``dtype`` (2mkn per product), repeated for at least ``seconds``."""
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(m, k, device=device, generator=g).to(dtype)
    b = torch.randn(k, n, device=device, generator=g).to(dtype)
    out = torch.empty(m, n, device=device, dtype=dtype)
    for _ in range(2):  # warm-up: library dispatch, caches
        torch.mm(a, b, out=out)
    sync(device)
    done, batch, t0 = 0, 1, time.perf_counter()
    while True:
        for _ in range(batch):  # doubling batches keep the clock reads (and CUDA syncs) rare
            torch.mm(a, b, out=out)
        done += batch
        sync(device)
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return 2.0 * m * k * n * done / elapsed
        batch *= 2


def profile_step(bench, x: torch.Tensor, steps: int = 3, top: int = 12) -> dict:
    """Where a training step's time goes: self time per op (torch.profiler, CPU or CUDA), the share of
    GEMM/conv ops, and the top ops."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.device.type == "cuda" else [])
    bench.train_steps(1)
    with profile(activities=acts) as prof:
        for _ in range(steps):
            with bench.autocast:
                loss = bench.m.loss(x)
            bench.opt.zero_grad(set_to_none=True)
            loss.backward()
            bench.opt.step()
        sync(x.device)
    key = "self_device_time_total" if x.device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    total = sum(getattr(e, key) for e in events) or 1.0
    gemm = sum(getattr(e, key) for e in events if _is_gemm(e.key))
    events.sort(key=lambda e: -getattr(e, key))
    return {"time": key, "total_ms_per_step": round(total / 1e3 / steps, 2), "gemm_share": round(gemm / total, 3),
            "top": [{"op": e.key, "share": round(getattr(e, key) / total, 3), "calls_per_step": e.count // steps}
                    for e in events[:top]]}


def _is_gemm(name: str) -> bool:
    op = name.split("::")[-1]
    return any(op == c or op.startswith(c + "_") or op.startswith(c + ".") for c in GEMM_CATEGORY) or "gemm" in op.lower()


# ----------------------------------------------------------------------------- the CPU table
def _args(a, precision: str) -> SimpleNamespace:
    return SimpleNamespace(levels=a.levels, steps=a.steps, hidden=a.hidden, batch=a.batch, precision=precision,
                           coupling_impl="auto", train_steps=a.train_steps)


def measure(a) -> dict:
    from benchmark import Bench, load_images

    device = torch.device("cpu")
    images = load_images(2048)
    models = [m for m in a.models.split(",") if m]
    benches = {(m, p): Bench(m, _args(a, p), device, images) for m in models for p in a.precisions.split(",")}
    x = images[: a.batch]
    first = {m: next(b for (m_, _), b in benches.items() if m_ == m) for m in models}
    flops = {m: training_flops(b, x) / a.batch for m, b in first.items()}  # the same count in fp32 and bf16
    shaped = (a.batch * (28 // 2) ** 2, a.hidden, a.hidden)
    for b in benches.values():
        b.train_steps(2)  # warm-up
    speed = {k: [] for k in benches}
    paired = {k: {"square": [], "shaped": []} for k in benches}  # per sample: achieved / the GEMM timed around it
    gemm = {(shape, p): [] for shape in ("square", "shaped") for p in a.precisions.split(",")}
    for r in range(a.rounds):
        for (m, p), b in benches.items():
            mm = lambda shape: gemm_rate(*((1024, 1024, 1024) if shape == "square" else shaped), DTYPES[p], device,  # noqa: E731
                                         a.gemm_seconds)
            before = mm("square")
            speed[(m, p)].append(b.train_steps(a.train_steps))
            after, sh = mm("square"), mm("shaped")
            gemm[("square", p)] += [before, after]
            gemm[("shaped", p)].append(sh)
            paired[(m, p)]["square"].append(flops[m] * speed[(m, p)][-1] / ((before + after) / 2))
            paired[(m, p)]["shaped"].append(flops[m] * speed[(m, p)][-1] / sh)
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{m}/{p} {speed[(m, p)][-1]:.0f} img/s" for m, p in benches),
              file=sys.stderr, flush=True)
    gemm_med = {f"{s}_{p}": statistics.median(v) for (s, p), v in gemm.items()}
    rows = []
    for (m, p), v in speed.items():
        img_s = statistics.median(v)
        rows.append({"model": m, "precision": p, "train_img_s": round(img_s, 1), "gflop_per_image": round(flops[m] / 1e9, 4),
                     "achieved_gflop_s": round(flops[m] * img_s / 1e9, 2),
                     "fraction_of_square_gemm": round(statistics.median(paired[(m, p)]["square"]), 3),
                     "fraction_of_shaped_gemm": round(statistics.median(paired[(m, p)]["shaped"]), 3),
                     "fraction_of_square_gemm_per_round": [round(f, 3) for f in paired[(m, p)]["square"]]})
    return {"setup": {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "config": f"1x28x28, {a.levels} levels x {a.steps} steps x {a.hidden}, batch {a.batch}",
                      "rounds": a.rounds, "train_steps_per_round": a.train_steps,
                      "square_gemm": "1024x1024x1024", "shaped_gemm": "x".join(map(str, shaped))},
            "gemm_gflop_s": {k: round(v / 1e9, 1) for k, v in gemm_med.items()}, "rows": rows}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def format_table(res: dict) -> str:
    s, g = res["setup"], res["gemm_gflop_s"]
    lines = [f"{s['cpu']}, {s['threads']} thread(s), torch {s['torch']}; {s['config']}; median of {s['rounds']} rounds",
             "GEMM GFLOP/s: " + ", ".join(f"{k} {v}" for k, v in g.items()), "",
             "| model | precision | train img/s | GFLOP / image | achieved GFLOP/s | of 1024^3 GEMM | of model-shaped GEMM |",
             "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['model']} | {r['precision']} | {r['train_img_s']} | {r['gflop_per_image']} | {r['achieved_gflop_s']} | "
                     f"{r['fraction_of_square_gemm']:.0%} | {r['fraction_of_shaped_gemm']:.0%} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="flowvae_glow,flowvae_hybrid,normflows_glow")
    ap.add_argument("--precisions", default="fp32,bf16")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--levels", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--train-steps", type=int, default=3, help="training steps timed per model per round")
    ap.add_argument("--gemm-seconds", type=float, default=0.3)
    ap.add_argument("--profile", default="", help="also profile this model's fp32 and bf16 steps (torch.profiler)")
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    res = measure(a)
    if a.profile:
        from benchmark import Bench, load_images

        images = load_images(512)
        res["profile"] = {p: profile_step(Bench(a.profile, _args(a, p), torch.device("cpu"), images), images[: a.batch])
                          for p in a.precisions.split(",")}
    print(format_table(res))
    for p, prof in res.get("profile", {}).items():
        print(f"\nprofile {a.profile} {p}: {prof['total_ms_per_step']} ms/step, GEMM/conv share {prof['gemm_share']:.0%}")
        for t in prof["top"]:
            print(f"  {t['share']:6.1%}  {t['calls_per_step']:5d}/step  {t['op']}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
