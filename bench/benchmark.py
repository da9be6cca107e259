"""Speed and memory: flowvae's flow-only Glow, flowvae's hybrid, and a normflows Glow of the same size.

    python bench/benchmark.py --out bench/results.json            # the README table (CPU)
    python bench/benchmark.py --device cuda --precision bf16 ...  # on a GPU

One run builds the three models at the same config (Fashion-MNIST 28x28, 8-bit, uniform
dequantisation, 2 levels x 8 steps x 128 hidden channels, batch 64; the hybrid adds the 64-d
global code and encoder of configs/fashion_mnist.yaml) and measures, for each:

* train images/s: forward + backward + Adamax step on a batch of real images (dequantised, bits/dim loss);
* sample images/s: draw a batch of latents and invert the flow (no grad);
* eval images/s: the per-image bound (flowvae: ``model.loss`` / normflows: ``log_prob``), no grad;
* peak memory: CPU: in a fresh subprocess per model (imports torch, loads the data, builds and
  initialises the model), the peak resident set size over ``--mem-steps`` training steps minus the RSS
  just before them (Linux VmHWM, reset through /proc/self/clear_refs), i.e. the memory training adds:
  activations, gradients, optimiser state, allocator slack.
  CUDA: ``torch.cuda.max_memory_allocated`` over the same steps.

By default it also measures ``flowvae_glow_conv2d``: flowvae's Glow with ``model.coupling_impl=conv`` (its
coupling networks as ``nn.Conv2d`` calls, the CUDA default; same weights) against the GEMM path.

Measurements are interleaved: each round times every model in turn (``--steps`` training steps,
then sampling, then evaluation), and the table reports the median over ``--rounds`` rounds, so
background load hits all models alike. ``--threads`` sets torch's intra-op threads (default: 1,
one core per model, as for the README's results; use 2 to give a model the whole 2-core machine).

The normflows model is built from normflows' own blocks as in its Glow example:
``GlowBlock(channels, 128, split_mode='channel', scale=True)`` x 8 per level, ``Squeeze``, ``Merge``,
``MultiscaleFlow`` with a learned ``DiagGaussian`` at each level (the split-off half and the top).
Its coupling networks are the same conv3x3 -> ReLU -> conv1x1 -> ReLU -> zero conv3x3 of width 128 as
flowvae's; both parameter counts are printed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = ("flowvae_glow", "flowvae_hybrid", "normflows_glow")
# Also measurable (--models): flowvae's Glow with model.coupling_impl=conv (the coupling networks as nn.Conv2d
# calls, as before the GEMM rewrite; same parameters and maths) against the GEMM path.
EXTRA = ("flowvae_glow_conv2d",)


# ----------------------------------------------------------------------------- models
def _flowvae_cfg(kind: str, a):
    """The model of ``kind`` at ``a``'s size. Other callers (bench/gpu_check.py) may set ``a.config`` (a file
    under configs/) and ``a.overrides`` (model.* items applied first) for other image shapes."""
    from flowvae import load_config

    base = getattr(a, "config", "fashion_mnist.yaml")
    return load_config(ROOT / "configs" / base, overrides=[*getattr(a, "overrides", ()),
        f"model.type={'glow' if kind.startswith('flowvae_glow') else 'hybrid'}", f"model.levels={a.levels}",
        f"model.steps={a.steps}", f"model.hidden={a.hidden}",
        f"model.coupling_impl={'conv' if kind.endswith('_conv2d') else a.coupling_impl}"])


def build_normflows_glow(levels: int, steps: int, hidden: int, shape=(1, 28, 28)):
    """normflows' Glow (examples/glow.ipynb), unconditional DiagGaussian priors."""
    import normflows as nf

    c, h, w = shape
    q0, merges, flows = [], [], []
    for i in range(levels):  # i = 0 is the coarsest level (normflows' sampling order)
        flows_ = [nf.flows.GlowBlock(c * 2 ** (levels + 1 - i), hidden, split_mode="channel", scale=True)
                  for _ in range(steps)]
        flows_ += [nf.flows.Squeeze()]
        flows.append(flows_)
        if i > 0:
            merges.append(nf.flows.Merge())
            latent = (c * 2 ** (levels - i), h // 2 ** (levels - i), w // 2 ** (levels - i))
        else:
            latent = (c * 2 ** (levels + 1), h // 2 ** levels, w // 2 ** levels)
        q0.append(nf.distributions.DiagGaussian(latent))
    return nf.MultiscaleFlow(q0, flows, merges, class_cond=False)


class NormflowsAdapter(torch.nn.Module):
    """The same bits/dim objective flowvae trains (uniform dequantisation, y = (x + u)/256 - 1/2), converted
    by flowvae's own ``Bound`` (objective.py): the flow's bits/dim, -log p(y)/(D ln 2) + 8."""

    def __init__(self, flow, shape=(1, 28, 28)):
        from flowvae.objective import Bound

        super().__init__()
        self.flow = flow
        self.shape = shape
        self.bound = Bound(math.prod(shape), 8)

    def bpd(self, x):
        xf = x.float()
        y = (xf + torch.rand_like(xf)) / 256 - 0.5
        return self.bound.flow_bpd(self.flow.log_prob(y, None))

    def loss(self, x):
        return self.bpd(x).mean()

    @torch.no_grad()
    def initialize(self, x):  # normflows' ActNorm initialises itself on the first batch it sees
        self.bpd(x)

    @torch.no_grad()
    def sample(self, n):
        return self.flow.sample(n)[0]


class FlowvaeAdapter(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def loss(self, x):
        return self.model.loss(x)["loss"]

    def bpd(self, x):
        return self.model.loss(x)["elbo_bpd"]

    def initialize(self, x):
        self.model.initialize(x)

    @torch.no_grad()
    def sample(self, n):
        return self.model.sample(n, temperature=0.7)


def build(kind: str, a, device):
    torch.manual_seed(0)
    if kind == "normflows_glow":
        shape = tuple(getattr(a, "shape", (1, 28, 28)))
        m = NormflowsAdapter(build_normflows_glow(a.levels, a.steps, a.hidden, shape), shape)
    else:
        from flowvae import FlowVAE

        m = FlowvaeAdapter(FlowVAE.from_config(_flowvae_cfg(kind, a).model))
    return m.to(device)


def count_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def load_images(n: int):
    from flowvae.config import DataConfig, ModelConfig
    from flowvae.data import load_dataset

    ds = load_dataset(DataConfig(dataset="fashion_mnist_sample"), ModelConfig(), "train")
    return ds[torch.arange(min(n, len(ds)))][0]


# ----------------------------------------------------------------------------- timing
class Bench:
    def __init__(self, kind, a, device, images):
        self.kind, self.a, self.device = kind, a, device
        self.m = build(kind, a, device)
        self.m.initialize(images[:512].to(device))
        self.m.train()
        self.opt = torch.optim.Adamax(self.m.parameters(), lr=1e-3)
        self.images = images
        self.pos = 0
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if a.precision == "bf16"
                         else torch.autocast(device.type, enabled=False))

    def batch(self):
        b = self.a.batch
        if self.pos + b > len(self.images):
            self.pos = 0
        x = self.images[self.pos:self.pos + b].to(self.device)
        self.pos += b
        return x

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def train_steps(self, n: int) -> float:
        self.m.train()
        xs = [self.batch() for _ in range(n)]
        self.sync()
        t0 = time.perf_counter()
        for x in xs:
            with self.autocast:
                loss = self.m.loss(x)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.sync()
        return n * self.a.batch / (time.perf_counter() - t0)

    def _timed(self, items, fn) -> float:
        """Images per second of ``fn(item)`` over ``items`` (one batch each), under this run's autocast."""
        self.sync()
        t0 = time.perf_counter()
        for item in items:
            with self.autocast:
                fn(item)
        self.sync()
        return len(items) * self.a.batch / (time.perf_counter() - t0)

    @torch.no_grad()
    def sample(self, n: int) -> float:
        self.m.eval()
        return self._timed(range(n), lambda _: self.m.sample(self.a.batch))

    @torch.no_grad()
    def evaluate(self, n: int) -> float:
        self.m.eval()
        return self._timed([self.batch() for _ in range(n)], self.m.bpd)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def memory_baseline(device: torch.device) -> tuple[int, bool]:
    """Bytes in use now, as the baseline of a peak-memory measurement, and whether the peak was reset
    (CUDA: the allocator's peak; CPU: the peak RSS, where Linux lets us reset it)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated(), True
    return _status_kib("VmRSS") * 1024, _reset_peak_rss()


def _reset_peak_rss() -> bool:
    """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def memory_child(kind: str, a) -> dict:
    """Runs in a fresh subprocess: peak memory training adds (see module docstring)."""
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    images = load_images(2048)
    b = Bench(kind, a, device, images)
    x = b.batch()
    base, hwm = memory_baseline(device)  # without a reset CPU peak, ru_maxrss, which also counts the init pass
    b.train_steps(a.mem_steps)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
        method = "torch.cuda.max_memory_allocated - allocated before training"
    elif hwm:
        peak = _status_kib("VmHWM") * 1024
        method = "peak RSS (VmHWM, reset via /proc/self/clear_refs) during training - RSS before it"
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        method = "peak RSS (ru_maxrss) - RSS before the first training step"
    del x
    return {"peak_mem_mb": round((peak - base) / 2**20, 1), "method": method}


def measure_memory(kind: str, a) -> dict:
    cmd = [sys.executable, __file__, "--_memory-child", kind, "--device", a.device, "--threads", str(a.threads),
           "--levels", str(a.levels), "--steps", str(a.steps), "--hidden", str(a.hidden), "--batch", str(a.batch),
           "--precision", a.precision, "--mem-steps", str(a.mem_steps), "--coupling-impl", a.coupling_impl]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main
def time_models(kinds, a, device, images) -> dict:
    """One measurement: fresh models, a warm-up, then ``a.rounds`` interleaved rounds; medians per model."""
    benches = {k: Bench(k, a, device, images) for k in kinds}
    params = {k: count_params(b.m) for k, b in benches.items()}
    for b in benches.values():  # warm-up: allocator, oneDNN primitive caches
        b.train_steps(2)
        b.sample(1)
        b.evaluate(1)
    runs = {k: {"train": [], "sample": [], "eval": []} for k in kinds}
    for r in range(a.rounds):
        for k, b in benches.items():
            runs[k]["train"].append(b.train_steps(a.train_steps))
            runs[k]["sample"].append(b.sample(a.sample_batches))
            runs[k]["eval"].append(b.evaluate(a.eval_batches))
        print(f"round {r + 1}/{a.rounds}: " + ", ".join(f"{k} train {runs[k]['train'][-1]:.0f} img/s" for k in kinds),
              file=sys.stderr, flush=True)
    return {k: {"params": params[k], **{f"{m}_img_s": statistics.median(v) for m, v in runs[k].items()}} for k in kinds}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--levels", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8, help="flow steps per level")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=1, help="independent measurements; the table is their median")
    ap.add_argument("--coupling-impl", default="auto", choices=["auto", "gemm", "conv"], help="flowvae's model.coupling_impl")
    ap.add_argument("--train-steps", type=int, default=5, help="training steps timed per model per round")
    ap.add_argument("--sample-batches", type=int, default=2)
    ap.add_argument("--eval-batches", type=int, default=4)
    ap.add_argument("--mem-steps", type=int, default=3)
    ap.add_argument("--models", default=",".join(MODELS + EXTRA), help=f"comma-separated, from {', '.join(MODELS + EXTRA)}")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--override", dest="overrides", action="append", default=[], metavar="model.KEY=VALUE",
                    help="a model.* override of configs/fashion_mnist.yaml for flowvae's models (repeatable), "
                         "e.g. model.shift_clamp=0 to time the flow without the shift bound")
    ap.add_argument("--out", default="", help="write the results as JSON here")
    ap.add_argument("--_memory-child", dest="memory_child", default="", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.memory_child:
        print(json.dumps(memory_child(a.memory_child, a)))
        return {}

    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    kinds = [k for k in a.models.split(",") if k]
    images = load_images(5000)
    # --repeat R: R independent measurements (fresh models each time), each a median over --rounds rounds;
    # the table reports the median over the R, and the train-speed ratio of each repeat is kept.
    reps = [time_models(kinds, a, device, images) for _ in range(a.repeat)]
    res = {k: {"params": reps[0][k]["params"],
               **{f"{m}_img_s": round(statistics.median(r[k][f"{m}_img_s"] for r in reps), 1) for m in ("train", "sample", "eval")}}
           for k in kinds}
    if "flowvae_glow" in res and "normflows_glow" in res:
        res["flowvae_glow"]["train_ratio_per_repeat"] = [
            round(r["flowvae_glow"]["train_img_s"] / r["normflows_glow"]["train_img_s"], 3) for r in reps]
    if not a.no_memory:
        for k in kinds:
            res[k].update(measure_memory(k, a))
    ratios = {}
    if "flowvae_glow" in res and "normflows_glow" in res:
        for m in ("train", "sample", "eval"):
            ratios[f"{m}: flowvae_glow / normflows_glow"] = round(res["flowvae_glow"][f"{m}_img_s"] / res["normflows_glow"][f"{m}_img_s"], 3)
    if "flowvae_glow" in res and "flowvae_hybrid" in res:
        ratios["train time: flowvae_hybrid / flowvae_glow"] = round(res["flowvae_glow"]["train_img_s"] / res["flowvae_hybrid"]["train_img_s"], 3)
    if "flowvae_glow" in res and "flowvae_glow_conv2d" in res:
        for m in ("train", "sample", "eval"):
            ratios[f"{m}: flowvae_glow / flowvae_glow_conv2d (before)"] = round(res["flowvae_glow"][f"{m}_img_s"] / res["flowvae_glow_conv2d"][f"{m}_img_s"], 3)
    setup = {"device": str(device), "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
             "threads": a.threads, "torch": torch.__version__, "precision": a.precision, "image": "1x28x28 Fashion-MNIST (shipped sample)",
             "levels": a.levels, "steps": a.steps, "hidden": a.hidden, "batch": a.batch, "rounds": a.rounds,
             "repeat": a.repeat, "train_steps_per_round": a.train_steps, "coupling_impl": a.coupling_impl}
    out = {"setup": setup, "results": res, "ratios": ratios}
    print(format_table(out))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(out, indent=2))
    return out


def format_table(out: dict) -> str:
    s, res = out["setup"], out["results"]
    lines = [f"config: {s['image']}, {s['levels']} levels x {s['steps']} steps x {s['hidden']} channels, batch {s['batch']}, "
             f"{s['precision']}, {s['device']}, {s['threads']} thread(s), torch {s['torch']}, median of {s.get('repeat', 1)} "
             f"repeat(s) of the median of {s['rounds']} rounds",
             "", "| model | params | train img/s | sample img/s | eval img/s | peak train mem (MB) |", "|---|---|---|---|---|---|"]
    for k, r in res.items():
        lines.append(f"| {k} | {r['params']:,} | {r['train_img_s']:.1f} | {r['sample_img_s']:.1f} | {r['eval_img_s']:.1f} | "
                     f"{r.get('peak_mem_mb', float('nan')):.1f} |")
    lines.append("")
    lines += [f"{k}: {v:.3f}" for k, v in out["ratios"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
