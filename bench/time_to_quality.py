"""Time to quality: flowvae's Glow / hybrid against normflows' Glow of the same size, trained side by side
under one recipe.

    python bench/time_to_quality.py --minutes 15 --max-steps 20000 --models normflows_glow,flowvae_hybrid --out runs/ttq
    python bench/time_to_quality.py --minutes 0 --max-steps 30 --eval-images 200 --out /tmp/ttq   # a smoke run

What the numbers compare: systems (model + implementation), not recipes. Every model trains in its own
process, all started at the same time, one thread each (``--threads``), fp32, on full Fashion-MNIST
(Debian's /usr/share/datasets/fashion-mnist, or ``--data-root``), 28x28, 8-bit, uniform dequantisation,
2 levels x 8 steps x 128 channels, with the same recipe: the ``train:`` section of ``--config``
(configs/fashion_mnist.yaml): its optimiser, lr, weight decay, linear warm-up, lr schedule (a function of
the step and the planned step count ``--max-steps`` alone, default the config's ``train.max_steps``),
gradient clipping, batch size, EMA and seed (the same epoch permutations of the data). ``--minutes``
stops every model after that many seconds of training steps (evaluation not counted); it never changes
the lr, so a faster system simply gets further along the same schedule in the same time. Then each is
scored on the test set (all 10,000 images by default): bits/dim under one uniform dequantisation draw
per image, i.e. flowvae's ``elbo_bpd`` (for a flow-only Glow the flow's exact -log p(x + u): the
dequantisation bound on -log P(x); for the hybrid the negative ELBO) and the same quantity for normflows'
Glow, converted by the same ``Bound`` (flowvae/objective.py). All three are upper bounds on bits/dim.

* ``normflows_glow``: normflows' own blocks (bench/benchmark.py builds it), trained by this script's
  loop with the recipe above (``--peer-recipe same``, the default), or with the recipe of normflows'
  Glow example (``--peer-recipe normflows_example``: Adam 1e-3, 200 linear warm-up steps, then constant,
  raw weights; the behaviour before this comparison: the difference then mixes systems and recipes).
* ``flowvae_glow`` / ``flowvae_hybrid``: ``flowvae train --config CONFIG`` with the same plan and budget.

The summary says, for each number, what it is and what the differences compare.
"""
from __future__ import annotations

import argparse
import copy
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

MODELS = ("normflows_glow", "flowvae_glow", "flowvae_hybrid")
PEER_RECIPES = ("same", "normflows_example")
WHAT = {"normflows_glow": "-log p(x + u) in bits/dim: the uniform-dequantisation bound on -log P(x), 1 draw of u per image",
        "flowvae_glow": "elbo_bpd = -log p(x + u) in bits/dim: the uniform-dequantisation bound on -log P(x), 1 draw of u per image",
        "flowvae_hybrid": "elbo_bpd = the negative ELBO in bits/dim: a bound on -log P(x), 1 draw of (z, u) per image"}


def load_recipe(a):
    """The flowvae config whose ``train:`` section is every model's recipe (with ``--override``s)."""
    from flowvae import load_config

    cfg = load_config(ROOT / a.config, overrides=a.override)
    if a.max_steps:
        cfg.train.max_steps = a.max_steps
    return cfg


def recipe_text(t, peer_recipe: str = "same") -> str:
    if peer_recipe == "normflows_example":
        return "Adam lr 1e-3, 200 linear warm-up steps, then constant, grad clip 50, batch 64, raw weights"
    schedule = f"cosine to 0 over {t.max_steps} planned steps" if t.lr_schedule == "cosine" else "then constant"
    ema = f"EMA {t.ema_decay}" if t.ema_decay > 0 else "raw weights"
    return (f"{t.optimizer} lr {t.lr:g} (weight decay {t.weight_decay:g}), {t.warmup_steps} linear warm-up steps, "
            f"{schedule}, grad clip {t.grad_clip:g}, batch {t.batch_size}, {ema}, seed {t.seed}")


def lr_at(t, step: int) -> float:
    """The config's lr at optimiser step ``step`` (0-based): linear warm-up times the schedule, a function
    of the step and the planned ``t.max_steps`` alone (as flowvae's training loop sets it)."""
    warm = min(1.0, (step + 1) / max(1, t.warmup_steps))
    if t.lr_schedule == "constant":
        return t.lr * warm
    return t.lr * warm * 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / t.max_steps)))


def peer_optimiser(model, t, peer_recipe: str):
    """(optimiser, lr as a function of the step, grad clip, EMA decay) for the peer."""
    if peer_recipe == "normflows_example":
        return torch.optim.Adam(model.parameters(), lr=1e-3), (lambda s: 1e-3 * min(1.0, (s + 1) / 200)), 50.0, 0.0
    kind = {"adamw": torch.optim.AdamW, "adamax": torch.optim.Adamax}[t.optimizer]
    return kind(model.parameters(), lr=t.lr, weight_decay=t.weight_decay), (lambda s: lr_at(t, s)), t.grad_clip, t.ema_decay


def ema_update(ema, model, decay: float, updates: int) -> None:
    """flowvae's EMA: decay ramped as min(decay, (1 + n) / (10 + n)) over the n updates so far."""
    d = min(decay, (1 + updates) / (10 + updates))
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters()):
            e.lerp_(p, 1.0 - d)
        for e, b in zip(ema.buffers(), model.buffers()):
            e.copy_(b)


def flowvae_cmd(kind: str, out: Path, a, cfg) -> list[str]:
    overrides = [f"model.type={'glow' if kind == 'flowvae_glow' else 'hybrid'}", f"train.threads={a.threads}",
                 "train.eval_every=0", "train.checkpoint_every=0", f"train.eval_images={a.eval_images}",
                 f"train.max_minutes={a.minutes}", f"train.max_steps={cfg.train.max_steps}", "train.precision=fp32"]
    if a.data_root:
        overrides.append(f"data.root={a.data_root}")
    return [sys.executable, "-m", "flowvae", "train", "--config", str(ROOT / a.config),
            "--out", str(out), "--no-progress", "--device", "cpu", *a.override, *overrides]


def train_peer(model, train_ds, t, a) -> tuple:
    """normflows' Glow trained with the recipe; returns (weights to evaluate, steps, seconds)."""
    from flowvae.data import iterate_batches

    opt, lr, clip, ema_decay = peer_optimiser(model, t, a.peer_recipe)
    ema = copy.deepcopy(model).eval() if ema_decay > 0 else None
    budget = a.minutes * 60 if a.minutes > 0 else math.inf
    batch = t.batch_size if a.peer_recipe == "same" else 64
    step, updates, seconds, epoch = 0, 0, 0.0, 0
    model.train()
    while step < t.max_steps and seconds < budget:
        for x, _ in iterate_batches(train_ds, batch, shuffle=True, seed=t.seed, epoch=epoch, drop_last=True):
            tic = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = lr(step)
            loss = model.loss(x)
            opt.zero_grad(set_to_none=True)
            if torch.isfinite(loss):  # like flowvae: a non-finite step is skipped
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                opt.step()
                if ema is not None:
                    ema_update(ema, model, ema_decay, updates)
                updates += 1
            step += 1
            seconds += time.perf_counter() - tic
            if step >= t.max_steps or seconds >= budget:
                break
        epoch += 1
    return (ema if ema is not None else model), step, seconds


def normflows_child(out: Path, a) -> dict:
    """Train normflows' Glow (the recipe, see the module docstring) and score it on the test set."""
    from benchmark import NormflowsAdapter, build_normflows_glow

    from flowvae.config import DataConfig, ModelConfig
    from flowvae.data import load_dataset

    cfg = load_recipe(a)
    t = cfg.train
    torch.set_num_threads(a.threads)
    torch.manual_seed(t.seed)
    data = DataConfig(dataset="fashion_mnist", root=a.data_root)
    train_ds, test_ds = load_dataset(data, ModelConfig(), "train"), load_dataset(data, ModelConfig(), "test")
    model = NormflowsAdapter(build_normflows_glow(2, 8, 128))
    g = torch.Generator().manual_seed(t.seed)
    model.initialize(train_ds[torch.randperm(len(train_ds), generator=g)[:t.init_batch_size]][0])  # ActNorm's data init
    weights, step, seconds = train_peer(model, train_ds, t, a)
    weights.eval()
    n = len(test_ds) if not a.eval_images else min(a.eval_images, len(test_ds))
    total = 0.0
    torch.manual_seed(t.seed + 1)
    with torch.no_grad():
        for start in range(0, n, 256):
            x = test_ds[torch.arange(start, min(n, start + 256))][0]
            total += weights.bpd(x).double().sum().item()
    res = {"steps": step, "train_minutes": round(seconds / 60, 2), "test_bpd": round(total / n, 4), "images": n}
    (out / "result.json").write_text(json.dumps(res, indent=2))
    return res


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="normflows_glow,flowvae_glow", help=", ".join(MODELS))
    ap.add_argument("--config", default="configs/fashion_mnist.yaml", help="the recipe (its train: section), for every model")
    ap.add_argument("--max-steps", type=int, default=0, help="planned steps of every model's schedule, and a stop "
                                                              "(0: the config's train.max_steps)")
    ap.add_argument("--minutes", type=float, default=15.0, help="stop each model after this many minutes of "
                                                                "training steps (0: none); never changes the lr")
    ap.add_argument("--peer-recipe", default="same", choices=PEER_RECIPES,
                    help="same: normflows trains with --config's recipe; normflows_example: Adam 1e-3 constant (old behaviour)")
    ap.add_argument("--override", action="append", default=[], help="extra flowvae override (train.* ones reach the peer too)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-images", type=int, default=0, help="test images scored (0: all 10,000)")
    ap.add_argument("--data-root", default="")
    ap.add_argument("--out", default="runs/time_to_quality")
    ap.add_argument("--_normflows", dest="normflows", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    bad = [k for k in a.models.split(",") if k and k not in MODELS]
    if bad:
        ap.error(f"unknown model(s) {', '.join(bad)}: choose from {', '.join(MODELS)}")
    return a


def launch(a, cfg, out: Path, argv) -> dict:
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
            cmd = flowvae_cmd(kind, d, a, cfg)
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
                             "images": m["images"]}
        recipe = a.peer_recipe if kind == "normflows_glow" else "same"
        results[kind].update(recipe=recipe_text(cfg.train, recipe), what=WHAT[kind])
    return results


def summarise(a, cfg, results: dict) -> dict:
    t = cfg.train
    same = a.peer_recipe == "same"
    summary = {"setup": {"config": a.config, "recipe": recipe_text(t), "peer_recipe": a.peer_recipe,
                         "planned_steps": t.max_steps, "minutes": a.minutes, "threads": a.threads,
                         "override": a.override, "eval_images": a.eval_images or 10000}, "results": results}
    if "normflows_glow" in results:
        ref = results["normflows_glow"]["test_bpd"]
        summary["below_normflows"] = {k: round(ref - r["test_bpd"], 4) for k, r in results.items() if k != "normflows_glow"}
        summary["compares"] = (
            "systems under one recipe: the same optimiser, lr schedule by step, batch, data order, threads and stop; "
            "the difference is the model and how fast its implementation steps" if same else
            "systems AND recipes: normflows trained with its Glow example's recipe, flowvae with --config's; "
            "the difference mixes both (use --peer-recipe same to compare the systems alone)")
    return summary


def report(summary: dict) -> None:
    s = summary["setup"]
    print(f"recipe ({s['config']}): {s['recipe']}; stop: {s['planned_steps']} steps"
          + (f" or {s['minutes']:g} min of training steps, whichever first" if s["minutes"] > 0 else "")
          + f"; {s['threads']} thread(s) each; test images: {s['eval_images']}")
    for kind, r in summary["results"].items():
        print(f"{kind}: test {r['test_bpd']:.4f} ({r['what']}) after {r['steps']} of {s['planned_steps']} planned steps "
              f"({r['train_minutes']} min of training); recipe: {r['recipe']}")
    for kind, d in summary.get("below_normflows", {}).items():
        steps = summary["results"][kind]["steps"] / max(1, summary["results"]["normflows_glow"]["steps"])
        print(f"{kind}: {d:+.4f} bpd below normflows_glow, after {steps:.2f}x its steps"
              + (" in the same time" if s["minutes"] > 0 else ""))
    if "compares" in summary:
        print(f"this compares {summary['compares']}")


def main(argv=None) -> dict:
    a = parse(argv)
    out = Path(a.out)
    if a.normflows:
        print(json.dumps(normflows_child(out / "normflows_glow", a)))
        return {}
    cfg = load_recipe(a)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(a, cfg, launch(a, cfg, out, argv))
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    report(summary)
    return summary


if __name__ == "__main__":
    main()
