"""Training memory and step time against depth: standard backprop, ``train.memory=recompute`` (reversible
backprop), ``train.memory=checkpoint`` and normflows' Glow, at K = 4, 8, 16, 32 steps per level.

    python bench/memory_depth.py --out bench/memory_depth.json --plot bench/memory_depth.png

Model: flowvae's Glow (``model.type=glow``) at the Fashion-MNIST config (1x28x28, 2 levels x K steps x
128 channels, batch 64, Adamax), and normflows' Glow of the same size (bench/benchmark.py builds it).

Memory (CPU): each (model, K) runs in a fresh subprocess with glibc's mmap threshold fixed at 64 KiB
(``MALLOC_MMAP_THRESHOLD_``), so every tensor above 64 KiB is its own mapping, returned to the system
when freed, and the resident set size follows the live tensors. After one warm-up step (which
allocates the optimiser state) the peak RSS (VmHWM, reset through /proc/self/clear_refs) over
``--mem-steps`` training steps minus the RSS just before them is the *step memory*: activations kept
for backprop, gradients and temporaries. The weights and optimiser state (3 x params x 4 bytes
with Adamax) are reported beside it; both grow linearly in K whatever the backprop.
CUDA: ``torch.cuda.max_memory_allocated`` over the same steps minus the memory allocated before them.

Step time: measured in this process, interleaved: each round times ``--time-steps`` training steps
of every mode in turn on the same weights; the ratios are medians over ``--rounds`` rounds, so
background load hits every mode alike.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from benchmark import NormflowsAdapter, _status_kib, build_normflows_glow, load_images, memory_baseline  # noqa: E402

MODES = ("standard", "recompute", "checkpoint")


def build(kind: str, k: int, a, device):
    """kind: a train.memory mode (flowvae's Glow) or 'normflows'."""
    torch.manual_seed(0)
    if kind == "normflows":
        return NormflowsAdapter(build_normflows_glow(a.levels, k, a.hidden)).to(device)
    from flowvae import FlowVAE, load_config

    cfg = load_config(ROOT / "configs" / "fashion_mnist.yaml", overrides=[
        f"model.type={a.model}", f"model.levels={a.levels}", f"model.steps={k}", f"model.hidden={a.hidden}"])
    model = FlowVAE(cfg.model).to(device)
    model.glow.set_memory(kind)
    return model


class Trainer:
    def __init__(self, kind, k, a, device, images):
        self.m = build(kind, k, a, device)
        self.m.initialize(images[:512].to(device))
        self.m.train()
        self.opt = torch.optim.Adamax(self.m.parameters(), lr=1e-3)
        self.images, self.a, self.device, self.pos = images, a, device, 0
        self.params = sum(p.numel() for p in self.m.parameters())

    def set_mode(self, mode: str) -> None:
        if hasattr(self.m, "glow"):
            self.m.glow.set_memory(mode)

    def step(self) -> None:
        b = self.a.batch
        if self.pos + b > len(self.images):
            self.pos = 0
        x = self.images[self.pos:self.pos + b].to(self.device)
        self.pos += b
        self.opt.zero_grad(set_to_none=True)
        out = self.m.loss(x)
        (out["loss"] if isinstance(out, dict) else out).backward()
        self.opt.step()

    def timed(self, n: int) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            self.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / n


def memory_child(kind: str, k: int, a) -> dict:
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    tr = Trainer(kind, k, a, device, load_images(1024))
    tr.step()  # warm-up: the optimiser state now exists, as in any later step
    tr.opt.zero_grad(set_to_none=True)
    base, reset = memory_baseline(device)
    if not reset:
        raise SystemExit("needs Linux /proc/self/clear_refs to reset the peak RSS")
    for _ in range(a.mem_steps):
        tr.step()
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _status_kib("VmHWM") * 1024
    return {"step_mb": round((peak - base) / 2**20, 1), "state_mb": round(3 * tr.params * 4 / 2**20, 1),
            "params": tr.params}


def measure_memory(kind: str, k: int, a) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(a.threads))
    cmd = [sys.executable, __file__, "--_child", f"{kind}:{k}", "--device", a.device, "--threads", str(a.threads),
           "--levels", str(a.levels), "--hidden", str(a.hidden), "--batch", str(a.batch), "--model", a.model,
           "--mem-steps", str(a.mem_steps)]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode:
        raise RuntimeError(f"memory child {kind} K={k} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def plot(out: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = out["setup"]["depths"]
    timed = any(out["time_ratio"].values())
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(10 if timed else 5.5, 4), squeeze=False)
    ax1 = axes[0][0]
    for kind in out["kinds"]:
        ax1.plot(depths, [out["memory"][kind][str(k)]["step_mb"] for k in depths], "o-", label=kind)
        if timed and out["time_ratio"].get(kind):
            axes[0][1].plot(depths, [out["time_ratio"][kind][str(k)] for k in depths], "o-", label=kind)
    s = out["setup"]
    ax1.set(xlabel="flow steps per level K", ylabel="peak step memory (MB)", xscale="log", xticks=depths,
            title=f"{s['levels']} levels x K x {s['hidden']}, batch {s['batch']}, {s['device']}")
    ax1.set_xticklabels(depths)
    if timed:
        axes[0][1].set(xlabel="flow steps per level K", ylabel="step time / standard", xscale="log", xticks=depths,
                       title="step time (median ratio, interleaved)")
        axes[0][1].set_xticklabels(depths)
    for ax in axes[0]:
        ax.minorticks_off()  # log-scaled x: only the K ticks
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--model", default="glow", choices=["glow", "hybrid"], help="flowvae's model.type")
    ap.add_argument("--levels", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--depths", default="4,8,16,32")
    ap.add_argument("--kinds", default="standard,recompute,checkpoint,normflows")
    ap.add_argument("--mem-steps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--time-steps", type=int, default=2)
    ap.add_argument("--no-time", action="store_true")
    ap.add_argument("--memory-from", default="", help="reuse the memory table of an earlier run's --out JSON")
    ap.add_argument("--out", default="")
    ap.add_argument("--plot", default="")
    ap.add_argument("--_child", dest="child", default="", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        kind, k = a.child.split(":")
        print(json.dumps(memory_child(kind, int(k), a)))
        return {}
    depths = [int(d) for d in a.depths.split(",")]
    kinds = [k for k in a.kinds.split(",") if k]
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    if a.memory_from:  # the memory part of an earlier run (e.g. measured while the machine was busy: RSS does not care)
        memory = json.loads(Path(a.memory_from).read_text())["memory"]
    else:
        memory = {kind: {} for kind in kinds}
        for k in depths:
            for kind in kinds:
                memory[kind][str(k)] = measure_memory(kind, k, a)
                print(f"K={k} {kind}: {memory[kind][str(k)]}", file=sys.stderr, flush=True)
        if a.out:
            Path(a.out).write_text(json.dumps({"memory": memory}, indent=2))
    times = {kind: {} for kind in kinds}
    if not a.no_time:
        images = load_images(2048)
        for k in depths:
            flowvae = Trainer("standard", k, a, device, images)  # one set of weights for every train.memory mode
            nf = Trainer("normflows", k, a, device, images) if "normflows" in kinds else None
            runs = {kind: [] for kind in kinds}
            for kind in kinds:  # warm-up
                (nf if kind == "normflows" else flowvae).set_mode(kind)
                (nf if kind == "normflows" else flowvae).step()
            for _ in range(a.rounds):
                for kind in kinds:
                    tr = nf if kind == "normflows" else flowvae
                    tr.set_mode(kind)
                    runs[kind].append(tr.timed(a.time_steps))
            for kind in kinds:
                times[kind][str(k)] = round(statistics.median(runs[kind]), 4)
            print(f"K={k} step s: {({kind: times[kind][str(k)] for kind in kinds})}", file=sys.stderr, flush=True)
    base = "standard" if "standard" in kinds else kinds[0]
    time_ratio = {kind: {str(k): round(times[kind][str(k)] / times[base][str(k)], 3) for k in depths if str(k) in times[kind]}
                  for kind in kinds if times[kind]}
    ratios = {}
    if 8 in depths and 32 in depths:
        for kind in kinds:
            m8, m32 = memory[kind]["8"], memory[kind]["32"]
            ratios[f"{kind}: step memory K=32 / K=8"] = round(m32["step_mb"] / m8["step_mb"], 3)
            ratios[f"{kind}: step + state memory K=32 / K=8"] = round(
                (m32["step_mb"] + m32["state_mb"]) / (m8["step_mb"] + m8["state_mb"]), 3)
    setup = {"device": str(device), "threads": a.threads, "torch": torch.__version__, "model": a.model,
             "levels": a.levels, "hidden": a.hidden, "batch": a.batch, "depths": depths, "rounds": a.rounds,
             "time_steps": a.time_steps, "mem_steps": a.mem_steps, "image": "1x28x28 Fashion-MNIST (shipped sample)"}
    out = {"setup": setup, "kinds": kinds, "memory": memory, "step_seconds": times, "time_ratio": time_ratio,
           "ratios": ratios}
    print(format_table(out))
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=2))
    if a.plot:
        plot(out, a.plot)
    return out


def format_table(out: dict) -> str:
    s, depths = out["setup"], out["setup"]["depths"]
    lines = [f"{s['model']}: {s['levels']} levels x K x {s['hidden']}, batch {s['batch']}, {s['device']}, "
             f"{s['threads']} thread(s), torch {s['torch']}", "",
             "| model | " + " | ".join(f"K={k}: step MB (+ state MB) | s/step (x standard)" for k in depths) + " |",
             "|---|" + "---|---|" * len(depths)]
    for kind in out["kinds"]:
        cells = []
        for k in depths:
            m = out["memory"][kind][str(k)]
            t = out["step_seconds"][kind].get(str(k))
            r = out["time_ratio"].get(kind, {}).get(str(k))
            cells += [f"{m['step_mb']:.1f} (+{m['state_mb']:.1f})", "-" if t is None else f"{t:.3f} ({r:.2f}x)"]
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"{k}: {v:.3f}" for k, v in out["ratios"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
