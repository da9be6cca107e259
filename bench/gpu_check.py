"""One command for the GPU: tests, speed, memory, roofline and torchrun, in one JSON file and one table.

    make gpu-check                                                 # on a CUDA machine (about 6 minutes)
    python bench/gpu_check.py --device cuda --out bench/results/gpu_check
    python bench/gpu_check.py --device cpu --quick --out /tmp/gc   # every stage at tiny sizes (CI)

Stages, in order (``--stages`` picks some; ``--cap NAME=SECONDS`` changes one's time cap):

* ``cuda_tests``: the suite's CUDA-marked tests (``pytest -m cuda``); says "skipped: no CUDA" without one.
* ``roundtrip``: the default config's hybrid with random weights on the device: decode(encode(x)) == x, the
  flow's float32 round trip, and its log-det against the slogdet of a brute-force float64 Jacobian.
* ``train``: train img/s and peak memory at CIFAR-10 Glow scale (3x32x32, 3 levels x 32 steps x 512, batch 64,
  synthetic uint8 images; configs/cifar10.yaml) for the hybrid and the flow-only Glow, each in fp32, bf16
  autocast, train.memory=recompute, coupling_impl=gemm and coupling_impl=conv; normflows' Glow of the same
  size in fp32 and bf16 ("skipped: normflows not installed" without it).
* ``roofline``: FLOPs per training image (``torch.utils.flop_counter``), large fp32 and bf16 matmuls timed in
  the same run, the achieved fraction of them for every ``train`` row, and a torch.profiler breakdown
  of the hybrid's step.
* ``distributed``: the Fashion-MNIST hybrid (shipped sample) under a 1-process torchrun (NCCL on CUDA, gloo
  on CPU): it trains, checkpoints, resumes, evaluates; the same checkpoint evaluated in one plain process
  must give the same number; a collective (all-reduce) in an explicitly initialised process group.
* ``compile``: the same two models in bf16 with ``torch.compile`` (compile time and img/s); last, as the
  stage most likely to need its whole cap.

Every stage runs in its own process under its own time cap (and the whole run under ``--budget``): a stage
that fails, crashes or runs out of time is recorded as such and the next one starts. Each stage writes its
results as they come (``OUT/stages/NAME.json``), and ``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` are
rewritten after every stage, so an interrupted run keeps what it measured. Exit status 1 if a stage failed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

NO_CUDA = "skipped: no CUDA"
NO_NORMFLOWS = "skipped: normflows not installed"


# ----------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class Sizes:
    """What each stage runs at: the GPU run (CIFAR-10 Glow scale) or --quick (seconds on one CPU thread)."""

    image: tuple = (3, 32, 32)
    levels: int = 3
    steps: int = 32
    hidden: int = 512
    batch: int = 64
    warmup: int = 3
    timed: int = 10
    model_extra: tuple = ()  # model.* overrides shrinking the rest of configs/cifar10.yaml
    matmul: int = 8192
    matmul_seconds: float = 1.0
    roundtrip: tuple = ()  # overrides of the default config for the float64 Jacobian (its size is H*W*C squared)
    dist_config: str = "fashion_mnist.yaml"
    dist_overrides: tuple = ("data.dataset=fashion_mnist_sample",)
    dist_steps: tuple = (600, 800)  # train to the first, resume to the second
    dist_eval: tuple = ("--k", "4", "--limit", "1000")
    compile_backend: str = "inductor"
    compile_models: tuple = ("flowvae_hybrid", "flowvae_glow")
    profile_steps: int = 3


FULL = Sizes()
QUICK = Sizes(image=(3, 8, 8), levels=2, steps=2, hidden=16, batch=8, warmup=1, timed=2,
              model_extra=("model.z_dim=8", "model.encoder_width=8", "model.encoder_blocks=1", "model.prior_hidden=16",
                           "model.dequantization=uniform"),
              matmul=256, matmul_seconds=0.1,
              roundtrip=("model.image_size=8", "model.steps=2", "model.hidden=16", "model.z_dim=8", "model.encoder_width=8"),
              dist_config="tiny.yaml", dist_overrides=("data.limit_train=128", "data.limit_test=32", "train.eval_every=0"),
              dist_steps=(4, 6), dist_eval=("--k", "2", "--limit", "32"),
              # dynamo's capture only, of one model: inductor's C++ build takes minutes on a busy CPU, and even
              # the capture of the tiny hybrid took 75 s there (load average 18 on 2 cores)
              compile_backend="eager", compile_models=("flowvae_hybrid",), profile_steps=1)

# seconds: (GPU run, --quick)
CAPS = {"cuda_tests": (60, 60), "roundtrip": (30, 30), "train": (120, 45), "roofline": (40, 45), "distributed": (90, 150),
        "compile": (100, 60)}


# ----------------------------------------------------------------------------- stage plumbing
class Recorder:
    """A stage's results, rewritten to disk after every item so a killed stage keeps what it measured."""

    def __init__(self, path: Path):
        self.path, self.data = path, {}

    def __setitem__(self, key, value):
        self.data[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.path)

    def __getitem__(self, key):
        return self.data[key]

    def attempt(self, key: str, fn: Callable[[], dict]) -> None:
        """``self[key] = fn()``, or the error it raised: one failing item does not stop the stage."""
        try:
            self[key] = {"status": "ok", **fn()}
        except Exception as e:  # noqa: BLE001  (any failure is a result here)
            self[key] = {"status": "failed", "error": f"{type(e).__name__}: {str(e).strip()[:300]}"}
            traceback.print_exc()
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


@dataclass
class Ctx:
    device: torch.device
    sizes: Sizes
    out: Path
    quick: bool
    rec: Recorder


def cuda_ok(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_available()


def normflows_available() -> bool:
    try:
        import normflows  # noqa: F401
        return True
    except ImportError:
        return False


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


# ----------------------------------------------------------------------------- stage: cuda_tests
def stage_cuda_tests(ctx: Ctx) -> None:
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests"],
                       capture_output=True, text=True, cwd=ROOT, env=child_env())
    tail = (r.stdout + r.stderr).strip().splitlines()
    ctx.rec["pytest"] = {"returncode": r.returncode, "summary": tail[-1] if tail else ""}
    if r.returncode not in (0, 5):  # 5: nothing collected
        raise RuntimeError("pytest -m cuda failed:\n" + "\n".join(tail[-30:]))


# ----------------------------------------------------------------------------- stage: roundtrip
def stage_roundtrip(ctx: Ctx) -> None:
    from flowvae import FlowVAE, load_config

    dev = ctx.device
    torch.manual_seed(0)
    model = FlowVAE.from_config(load_config(None, []).model).to(dev)
    x = torch.randint(0, 256, (16, *model.image_shape), dtype=torch.uint8, device=dev)
    model.initialize(x)
    _randomize(model, 0.01)
    ctx.rec.attempt("default_config", lambda: _round_trip(model, x))
    small = FlowVAE.from_config(load_config(None, list(ctx.sizes.roundtrip)).model).to(dev)
    small.initialize(torch.randint(0, 256, (16, *small.image_shape), dtype=torch.uint8, device=dev))
    _randomize(small, 0.01)
    ctx.rec.attempt("float64_logdet", lambda: _logdet_check(small.double(), ctx.sizes.roundtrip))
    if any(v.get("status") != "ok" for v in ctx.rec.data.values()):
        raise RuntimeError("a round-trip or log-det check failed")


@torch.no_grad()
def _randomize(model, std: float) -> None:
    """Fresh flows are the identity (zero-initialised last layers of the couplings and split priors): give
    those random weights so the checks mean something."""
    g = torch.Generator().manual_seed(1)
    for name, p in model.glow.named_parameters():
        if ".out." in name or name.startswith("priors."):
            p.add_(torch.randn(p.shape, generator=g).to(p) * std)


@torch.no_grad()
def _round_trip(model, x) -> dict:
    z, eps = model.encode(x)
    codes_ok = bool(torch.equal(model.decode(z, eps), x))
    y = (x.float() + 0.5) / 256 - 0.5
    cond = model.split_code(z)
    out, ld = model.glow(y, *cond)
    back, ld_inv = model.glow.inverse(out, *cond)
    err = (back - y).abs().max().item()
    ld_sum = (ld + ld_inv).abs().max().item()
    ok = codes_ok and err < 1e-4 and ld_sum < 1e-4 * max(1.0, ld.abs().max().item())
    if not ok:
        raise AssertionError(f"decode(encode(x)) == x: {codes_ok}; |x - f^-1(f(x))| {err:.2e}; |ld + ld_inv| {ld_sum:.2e}")
    return {"decode_encode_exact": codes_ok, "max_abs_roundtrip_error": err, "max_abs_logdet_sum": ld_sum,
            "image_shape": list(model.image_shape), "params": sum(p.numel() for p in model.parameters())}


def _logdet_check(model, overrides) -> dict:
    dev = model.device
    g = torch.Generator().manual_seed(2)
    y = (torch.rand(1, *model.image_shape, generator=g, dtype=torch.float64) - 0.5).to(dev)
    z = torch.randn(1, model.code_dim, generator=g, dtype=torch.float64).to(dev) if model.hybrid else None
    cond = model.split_code(z) if z is not None else (None, None)
    with torch.no_grad():
        _, ld = model.glow(y, *cond)
    flat = lambda v: model.glow(v.view_as(y), *cond)[0].reshape(-1)  # noqa: E731
    try:  # one batched backward pass; the GEMM coupling's hand-written backward has no batching rule
        jac = torch.autograd.functional.jacobian(flat, y.reshape(-1), vectorize=True)
    except RuntimeError:
        jac = torch.autograd.functional.jacobian(flat, y.reshape(-1))
    brute = torch.linalg.slogdet(jac)[1].item()
    diff = abs(brute - ld.item())
    if diff > 1e-6 * max(1.0, abs(brute)):
        raise AssertionError(f"log-det {ld.item():.10f} vs brute-force float64 Jacobian {brute:.10f}")
    return {"logdet": ld.item(), "brute_force": brute, "abs_diff": diff, "dims": int(y.numel()), "overrides": list(overrides)}


# ----------------------------------------------------------------------------- stage: train / compile
VARIANTS = {  # name: (precision, coupling_impl, memory, compile)
    "fp32": ("fp32", "auto", "standard", False),
    "bf16": ("bf16", "auto", "standard", False),
    "recompute": ("fp32", "auto", "recompute", False),
    "gemm": ("fp32", "gemm", "standard", False),
    "conv": ("fp32", "conv", "standard", False),
}
# conv: the CUDA default; on CPU the GEMM path's hand-written backward (out= into a view) splits the graph
COMPILED = {"bf16_compile": ("bf16", "conv", "standard", True)}


def bench_args(s: Sizes, precision: str, impl: str) -> SimpleNamespace:
    """bench/benchmark.py's arguments for a model at these sizes (configs/cifar10.yaml underneath)."""
    c, h, _ = s.image
    prior = [] if normflows_available() else ["model.prior=normal"]  # the flow prior is built from normflows
    return SimpleNamespace(levels=s.levels, steps=s.steps, hidden=s.hidden, batch=s.batch, precision=precision,
                           coupling_impl=impl, config="cifar10.yaml", shape=s.image,
                           overrides=[f"model.image_channels={c}", f"model.image_size={h}", *s.model_extra, *prior])


def synthetic_images(s: Sizes, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, *s.image), dtype=torch.uint8, generator=g)


def time_variant(ctx: Ctx, kind: str, variant: tuple) -> dict:
    """Train img/s and peak memory of one model in one variant (a fresh model each time)."""
    from benchmark import Bench, count_params, memory_baseline

    precision, impl, memory, compiled = variant
    s, dev = ctx.sizes, ctx.device
    images = synthetic_images(s, 4 * s.batch)
    b = Bench(kind, bench_args(s, precision, impl), dev, images)
    if memory != "standard":
        b.m.model.glow.set_memory(memory)
    info = {"params": count_params(b.m), "precision": precision, "coupling_impl": _impl_of(b), "memory": memory}
    if compiled:
        b.m.loss = torch.compile(b.m.loss, backend=s.compile_backend)
        info["compile_backend"] = s.compile_backend
    t0 = time.perf_counter()
    b.train_steps(s.warmup)  # warm-up (and, compiled, the compilation)
    info["warmup_s"] = round(time.perf_counter() - t0, 2)
    base, _ = memory_baseline(dev)
    info["train_img_s"] = round(b.train_steps(s.timed), 2)
    info["peak_mem_mb"] = _peak_mb(dev, base)
    with torch.no_grad(), b.autocast:
        info["loss"] = round(float(b.m.loss(b.batch())), 4)
    if not info["loss"] == info["loss"]:
        raise FloatingPointError(f"non-finite loss after training: {info}")
    return info


def _impl_of(b) -> str:
    glow = getattr(getattr(b.m, "model", None), "glow", None)
    if glow is None:
        return "normflows"
    net = next(m for m in glow.modules() if hasattr(m, "resolved_impl"))
    return net.resolved_impl(next(glow.parameters()).device)


def _peak_mb(dev: torch.device, base: int):
    from benchmark import _status_kib

    if dev.type == "cuda":
        return round((torch.cuda.max_memory_allocated(dev) - base) / 2**20, 1)
    return None  # CPU: the RSS of one process that built earlier models says little; bench/benchmark.py measures it


def stage_train(ctx: Ctx) -> None:
    ctx.rec["memory_method"] = ("torch.cuda.max_memory_allocated during the timed steps - allocated before them"
                                if ctx.device.type == "cuda" else "not measured on CPU (bench/benchmark.py: a process per model)")
    for kind in ("flowvae_hybrid", "flowvae_glow"):
        for name, variant in VARIANTS.items():
            ctx.rec.attempt(f"{kind}/{name}", lambda: time_variant(ctx, kind, variant))
    for name in ("fp32", "bf16"):
        if normflows_available():
            ctx.rec.attempt(f"normflows_glow/{name}", lambda: time_variant(ctx, "normflows_glow", VARIANTS[name]))
        else:
            ctx.rec[f"normflows_glow/{name}"] = {"status": NO_NORMFLOWS}
    _raise_if_failed(ctx.rec)


def stage_compile(ctx: Ctx) -> None:
    for kind in ctx.sizes.compile_models:
        for name, variant in COMPILED.items():
            ctx.rec.attempt(f"{kind}/{name}", lambda: time_variant(ctx, kind, variant))
    _raise_if_failed(ctx.rec)


def _raise_if_failed(rec: Recorder) -> None:
    bad = [k for k, v in rec.data.items() if isinstance(v, dict) and v.get("status") == "failed"]
    if bad:
        raise RuntimeError(f"failed: {', '.join(bad)}")


# ----------------------------------------------------------------------------- stage: roofline
def stage_roofline(ctx: Ctx) -> None:
    from benchmark import Bench
    from roofline import gemm_rate, profile_step, training_flops

    s, dev = ctx.sizes, ctx.device
    images = synthetic_images(s, 4 * s.batch)
    kinds = ["flowvae_hybrid", "flowvae_glow"] + (["normflows_glow"] if normflows_available() else [])
    for kind in kinds:
        ctx.rec.attempt(f"flops/{kind}", lambda: {"gflop_per_image": training_flops(
            Bench(kind, bench_args(s, "fp32", "auto"), dev, images), images[: s.batch].to(dev)) / s.batch / 1e9})
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        n = s.matmul
        ctx.rec.attempt(f"matmul/{name}", lambda: {"n": n, "tflop_s": gemm_rate(n, n, n, dtype, dev, s.matmul_seconds) / 1e12,
                                                    "tf32": bool(torch.backends.cuda.matmul.allow_tf32)})
    ctx.rec["fractions"] = roofline_fractions(ctx.rec.data, _read_stage(ctx.out, "train"), _read_stage(ctx.out, "compile"))
    ctx.rec.attempt("profile/flowvae_hybrid/bf16", lambda: profile_step(
        Bench("flowvae_hybrid", bench_args(s, "bf16", "auto"), dev, images), images[: s.batch].to(dev), steps=s.profile_steps))
    _raise_if_failed(ctx.rec)


def roofline_fractions(roof: dict, *stages: dict) -> dict:
    """Achieved TFLOP/s of every timed train row, and its fraction of the matmul of its precision."""
    out = {}
    for stage in stages:
        for key, row in stage.items():
            kind = key.split("/")[0]
            flops = roof.get(f"flops/{kind}", {}).get("gflop_per_image")
            mm = roof.get(f"matmul/{row.get('precision', '')}", {}).get("tflop_s") if isinstance(row, dict) else None
            if not isinstance(row, dict) or "train_img_s" not in row or flops is None or not mm:
                continue
            achieved = flops * 1e9 * row["train_img_s"] / 1e12
            out[key] = {"achieved_tflop_s": float(f"{achieved:.4g}"), "fraction_of_matmul": round(achieved / mm, 4)}
    return out


def _read_stage(out: Path, name: str) -> dict:
    p = out / "stages" / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else {}


# ----------------------------------------------------------------------------- stage: distributed
def stage_distributed(ctx: Ctx) -> None:
    s, run = ctx.sizes, ctx.out / "dist_run"
    dev = "cuda" if ctx.device.type == "cuda" else "cpu"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    common = ["--device", dev, *s.dist_overrides, "train.log_every=1", "train.max_minutes=0", "train.checkpoint_every=0"]
    first, second = s.dist_steps
    ctx.rec.attempt("collective", lambda: _run(torchrun + [str(Path(__file__).resolve()), "--_collective", "--device", dev]))
    ctx.rec.attempt("train", lambda: _run(torchrun + ["-m", "flowvae", "train", "--config", str(ROOT / "configs" / s.dist_config),
                                                     "--out", str(run), "--no-progress", *common, f"train.max_steps={first}"]))
    ctx.rec.attempt("resume", lambda: _resume(torchrun, run, common, first, second))
    ev = [str(ctx.out / "eval_torchrun.json"), str(ctx.out / "eval_single.json"), str(ctx.out / "eval_seed1.json")]
    base = ["-m", "flowvae", "evaluate", "--checkpoint", str(run), "--device", dev, *s.dist_eval]
    ctx.rec.attempt("evaluate_torchrun", lambda: _run(torchrun + base + ["--out", ev[0]]))
    # one plain process (this one: the same CLI code without torchrun), at the same seed and at another
    ctx.rec.attempt("evaluate_single", lambda: _cli(base[2:] + ["--out", ev[1]]))
    ctx.rec.attempt("evaluate_single_seed1", lambda: _cli(base[2:] + ["--seed", "1", "--out", ev[2]]))
    ctx.rec.attempt("compare", lambda: _compare(*ev))
    _raise_if_failed(ctx.rec)


def _run(cmd: list) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=child_env())
    if r.returncode != 0:
        raise RuntimeError(f"exit {r.returncode}: {' '.join(cmd[-6:])}\n{(r.stdout + r.stderr)[-1500:]}")
    return {"seconds": round(time.perf_counter() - t0, 1), "last_line": (r.stdout.strip().splitlines() or [""])[-1][:200]}


def _cli(args: list) -> dict:
    from flowvae.cli import main as flowvae_main

    t0 = time.perf_counter()
    rc = flowvae_main(args)
    if rc:
        raise RuntimeError(f"flowvae {' '.join(args)} exited with {rc}")
    return {"seconds": round(time.perf_counter() - t0, 1), "in_process": True}


def _resume(torchrun: list, run: Path, common: list, first: int, second: int) -> dict:
    from flowvae.checkpoint import read_checkpoint

    before = read_checkpoint(run / "checkpoint.pt")["step"]
    res = _run(torchrun + ["-m", "flowvae", "train", "--out", str(run), "--resume", "--no-progress", *common,
                           f"train.max_steps={second}"])
    after = read_checkpoint(run / "checkpoint.pt")
    if (before, after["step"]) != (first, second):
        raise AssertionError(f"checkpoint steps {before} -> {after['step']}, expected {first} -> {second}")
    return {**res, "steps": [before, after["step"]], "world_size": after.get("world_size")}


def _compare(torchrun_json: str, single_json: str, seed1_json: str) -> dict:
    a, b, c = (json.loads(Path(p).read_text()) for p in (torchrun_json, single_json, seed1_json))
    diff, noise = abs(a["elbo_bpd"] - b["elbo_bpd"]), abs(c["elbo_bpd"] - b["elbo_bpd"])
    if diff > max(noise, 1e-6):
        raise AssertionError(f"torchrun evaluation {a['elbo_bpd']:.6f} vs one process {b['elbo_bpd']:.6f}: differ by "
                             f"{diff:.2e}, more than another seed's {noise:.2e}")
    return {"elbo_bpd_torchrun": a["elbo_bpd"], "elbo_bpd_single": b["elbo_bpd"], "abs_diff": diff,
            "seed_to_seed_diff": noise, "images": b["images"], "k": b["k"]}


def collective_probe(device: str) -> None:
    """Under torchrun: initialise the process group itself (flowvae makes none for one process), NCCL on
    CUDA or gloo, and all-reduce a tensor."""
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if device == "cuda" else torch.device("cpu")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend, rank=rank, world_size=world)
    t = torch.full((1024,), float(rank + 1), device=dev)
    dist.all_reduce(t)
    want = world * (world + 1) / 2
    dist.destroy_process_group()
    if not torch.allclose(t.cpu(), torch.full((1024,), want)):
        raise SystemExit(f"all_reduce over {backend} gave {t[0].item()}, expected {want}")
    print(f"{backend} all_reduce ok on {dev} ({world} process(es))")


# ----------------------------------------------------------------------------- registry, runner, report
@dataclass(frozen=True)
class Stage:
    fn: Callable[[Ctx], None]
    needs_cuda: bool = False


# compile last: inductor's build of a 96-step flow is the stage most likely to need its whole cap
STAGES = {"cuda_tests": Stage(stage_cuda_tests, needs_cuda=True), "roundtrip": Stage(stage_roundtrip),
          "train": Stage(stage_train), "roofline": Stage(stage_roofline), "distributed": Stage(stage_distributed),
          "compile": Stage(stage_compile)}


def run_child(a) -> None:
    """One stage, in this (child) process."""
    device = torch.device(a.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    out = Path(a.out)
    ctx = Ctx(device, QUICK if a.quick else FULL, out, a.quick, Recorder(out / "stages" / f"{a.stage}.json"))
    STAGES[a.stage].fn(ctx)


def run_stage(name: str, a, cap: float) -> dict:
    """Runs stage ``name`` in a child process under ``cap`` seconds; returns its summary."""
    if STAGES[name].needs_cuda and not cuda_ok(torch.device(a.device)):
        return {"status": NO_CUDA, "seconds": 0.0}
    path = Path(a.out) / "stages" / f"{name}.json"
    path.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_stage", name, "--device", a.device, "--out", a.out]
    cmd += ["--quick"] if a.quick else []
    t0 = time.perf_counter()
    log = Path(a.out) / "stages" / f"{name}.log"
    with open(log, "w") as f:  # its own session: a timeout ends the stage with everything it started (torchrun)
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=child_env(), start_new_session=True)
        try:
            status = "ok" if p.wait(timeout=cap) == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            status = f"timeout after {cap:.0f} s (partial results kept)"
    res = {"status": status, "seconds": round(time.perf_counter() - t0, 1), "log": str(log.relative_to(a.out))}
    if status == "failed":
        res["error"] = (log.read_text().strip().splitlines() or ["(no output)"])[-1][:300]
    return res


def environment() -> dict:
    from roofline import cpu_name

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                    text=True, cwd=ROOT).stdout.strip())
    except OSError:
        commit, dirty = "", False
    cuda = torch.cuda.is_available()
    return {"device": torch.cuda.get_device_name(0) if cuda else cpu_name(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if cuda else None,
            "gpus": torch.cuda.device_count() if cuda else 0, "commit": (commit or "unknown") + ("+dirty" if dirty else ""),
            "python": platform.python_version(), "normflows": normflows_available(), "cpu_threads": os.cpu_count(),
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


def write_report(out: Path, report: dict) -> None:
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "gpu_check.md").write_text(format_markdown(report))


def format_markdown(r: dict) -> str:
    e = r["environment"]
    lines = [f"# gpu_check: {e['device']}", "",
             f"torch {e['torch']}, CUDA {e['cuda']}, cuDNN {e['cudnn']}, commit {e['commit']}, {e['date_utc']} UTC, "
             f"{'--quick sizes' if r['quick'] else 'CIFAR-10 Glow scale (3x32x32, 3 levels x 32 steps x 512, batch 64)'}",
             "", "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {k} | {v['status']} | {v['seconds']} |" for k, v in r["stages"].items()]
    results = r["results"]
    fractions = roofline_fractions(results.get("roofline", {}), results.get("train", {}), results.get("compile", {}))
    rows = [(k, v) for st in ("train", "compile") for k, v in results.get(st, {}).items() if isinstance(v, dict) and "status" in v]
    if rows:
        lines += ["", "| model / variant | train img/s | peak memory (MB) | achieved TFLOP/s | of matmul (same precision) |",
                  "|---|---|---|---|---|"]
        for k, v in rows:
            f = fractions.get(k, {})
            cells = ([_num(v.get("train_img_s")), _num(v.get("peak_mem_mb")), _num(f.get("achieved_tflop_s")),
                      f"{f['fraction_of_matmul']:.1%}" if f else "-"] if v["status"] == "ok"
                     else [v["status"] + " " + v.get("error", ""), "", "", ""])
            lines.append(f"| {k} | " + " | ".join(str(c) for c in cells) + " |")
    roof = results.get("roofline", {})
    mm = [f"{k.split('/')[1]} {v['tflop_s']:.3g} TFLOP/s (n={v['n']})" for k, v in roof.items() if k.startswith("matmul/") and "tflop_s" in v]
    fl = [f"{k.split('/')[1]} {v['gflop_per_image']:.4g}" for k, v in roof.items() if k.startswith("flops/") and "gflop_per_image" in v]
    if mm or fl:
        lines += ["", "Matmul: " + ", ".join(mm), "GFLOP per training image: " + ", ".join(fl)]
    cmp_ = results.get("distributed", {}).get("compare", {})
    if "elbo_bpd_single" in cmp_:
        lines += ["", f"torchrun (1 process) vs one process on the same checkpoint: elbo_bpd {cmp_['elbo_bpd_torchrun']:.5f} vs "
                      f"{cmp_['elbo_bpd_single']:.5f} (another seed: {cmp_['seed_to_seed_diff']:.1e} apart)"]
    return "\n".join(lines) + "\n"


def _num(v) -> str:
    return "-" if v is None else f"{v:.4g}"


def parse_caps(items: list) -> dict:
    caps = {}
    for item in items:
        name, _, sec = item.partition("=")
        if name not in STAGES or not sec:
            raise SystemExit(f"error: --cap takes STAGE=SECONDS with a stage from {', '.join(STAGES)}, got {item!r}")
        caps[name] = float(sec)
    return caps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda | cpu")
    ap.add_argument("--quick", action="store_true", help="tiny sizes: every stage in seconds (the CPU dry run)")
    ap.add_argument("--out", default=str(ROOT / "results" / "gpu_check"))
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, from {', '.join(STAGES)}")
    ap.add_argument("--cap", action="append", default=[], metavar="STAGE=SECONDS", help="one stage's time cap")
    ap.add_argument("--budget", type=float, default=0, help="seconds for all stages (default 330; --quick 300)")
    ap.add_argument("--_stage", dest="stage", default="", help=argparse.SUPPRESS)
    ap.add_argument("--_collective", dest="collective", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.collective:
        collective_probe(a.device)
        return 0
    if a.stage:
        run_child(a)
        return 0
    if a.device not in ("cuda", "cpu"):
        raise SystemExit(f"error: --device must be cuda or cpu, got {a.device!r}")
    names = [n for n in a.stages.split(",") if n]
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise SystemExit(f"error: unknown stage(s) {', '.join(unknown)}; choose from {', '.join(STAGES)}")
    caps = {n: CAPS[n][1 if a.quick else 0] for n in STAGES} | parse_caps(a.cap)
    out = Path(a.out)
    (out / "stages").mkdir(parents=True, exist_ok=True)
    budget = a.budget or (300 if a.quick else 330)
    report = {"environment": environment(), "quick": a.quick, "requested_device": a.device, "stages": {}, "results": {}}
    start = time.perf_counter()
    for name in names:
        left = budget - (time.perf_counter() - start)
        if left < 1:
            report["stages"][name] = {"status": "not run: --budget spent", "seconds": 0.0}
        else:
            report["stages"][name] = run_stage(name, a, min(caps[name], left))
            report["results"][name] = _read_stage(out, name)
        print(f"{name}: {report['stages'][name]['status']} ({report['stages'][name]['seconds']} s)", flush=True)
        write_report(out, report)
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    write_report(out, report)
    print(format_markdown(report))
    bad = [n for n, v in report["stages"].items() if not (v["status"] == "ok" or v["status"].startswith("skipped"))]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
