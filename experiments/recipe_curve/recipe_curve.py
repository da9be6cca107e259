"""Recipe curve: the hybrid of configs/fashion_mnist.yaml under two training recipes, side by side, for an hour.

    python experiments/recipe_curve/recipe_curve.py --minutes 60 --out runs/curve60      # train (or resume) both, score, plot
    python experiments/recipe_curve/recipe_curve.py --out runs/curve60 --no-train          # only score and plot finished runs

Each recipe (``--recipes``, a config each: ``today`` is configs/fashion_mnist_adamax.yaml, Adamax 1e-3 with
500 warm-up steps and EMA weights; ``new`` is configs/fashion_mnist.yaml, AdamW 2e-3, 200 warm-up steps, cosine
decay to 0 at the end of the budget, raw weights) trains in its own process, all started together, one thread each, for the
same budget of training-step minutes, on full Fashion-MNIST. A run that has a checkpoint is resumed, so
an interrupted curve continues where it stopped. During training each run scores its first 1,000 test
images every 500 steps (TensorBoard ``eval/elbo_bpd``); at the end each is scored on all 10,000 test
images (``flowvae evaluate --k 1``: the ELBO, one dequantisation and one z draw per image).

``--also NAME=RUN`` adds a finished run (e.g. the flow-only Glow of the README's table) to the table and
plot. Where ``flowvae analyze`` has written ``<run>/analysis.json``, the table shows its swap results.

Writes ``<out>/summary.json``, and ``--plot`` (PNG: test bound against training minutes, the minutes
being steps times the run's mean step time) and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

RECIPES = {"today": "configs/fashion_mnist_adamax.yaml", "new": "configs/fashion_mnist.yaml"}  # recipe -> config


def train_cmd(recipe: str, d: Path, a) -> list[str]:
    cmd = [sys.executable, "-m", "flowvae", "train", "--out", str(d), "--no-progress", "--device", "cpu"]
    if (d / "checkpoint.pt").exists():
        return cmd + ["--resume"]
    cmd += ["--config", str(ROOT / RECIPES[recipe]), f"train.threads={a.threads}",
            f"train.max_minutes={a.minutes}", "train.max_steps=0", "train.checkpoint_every=200", "train.eval_every=500",
            "train.eval_images=1000", f"train.seed={a.seed}"]
    if a.data_root:
        cmd.append(f"data.root={a.data_root}")
    return cmd


def curve(d: Path) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(d / "tb"), size_guidance={"scalars": 0})
    ea.Reload()
    points = {e.step: e.value for e in ea.Scalars("eval/elbo_bpd")} if "eval/elbo_bpd" in ea.Tags()["scalars"] else {}
    return sorted(points.items())  # a resumed run may log a step twice: the last value wins


def score(d: Path, overrides) -> dict:
    """The run's bound on all test images (scored once, cached in eval_full.json), its curve and, where
    ``flowvae analyze`` has written <run>/analysis.json, its swap results."""
    out = d / "eval_full.json"
    if not out.exists():
        subprocess.run([sys.executable, "-m", "flowvae", "evaluate", "--checkpoint", str(d), "--k", "1",
                        "--device", "cpu", "--out", str(out)], check=True, cwd=ROOT)
    res = json.loads(out.read_text())
    ck = torch.load(d / "checkpoint.pt", map_location="cpu", weights_only=False)
    r = {"steps": ck["step"], "train_minutes": round(ck["train_seconds"] / 60, 2),
         "test_elbo_bpd": round(res["elbo_bpd"], 4), "images": res.get("images"), "kl_nats": res.get("kl_nats"),
         "overrides": overrides, "curve_1000_images": curve(d)}
    if (d / "analysis.json").exists():
        sw = json.loads((d / "analysis.json").read_text())["swap"]["global"]
        r["swap_to_global_class"] = sw["to_global_class"]
        r["follows_local"] = {"brightness": sw["brightness_follows_local"], "texture": sw["texture_follows_local"]}
    return r


def plot(summary: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e .[plots]): no plot")
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    for recipe, r in summary["results"].items():
        per_step = r["train_minutes"] / max(1, r["steps"])
        xs, ys = zip(*r["curve_1000_images"]) if r["curve_1000_images"] else ((), ())
        line, = ax.plot([s * per_step for s in xs], ys, marker="o", ms=3, label=f"{recipe}")
        ax.plot([r["train_minutes"]], [r["test_elbo_bpd"]], marker="*", ms=12, color=line.get_color(),
                label=f"{recipe}: {r['test_elbo_bpd']:.3f} on all 10,000 test images")
    ax.set_xlabel("training minutes (1 thread)")
    ax.set_ylabel("test elbo_bpd (first 1,000 images)")
    ax.set_ylim(top=min(5.0, ax.get_ylim()[1]))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("configs/fashion_mnist.yaml: training recipes side by side")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def table(summary: dict) -> str:
    res = summary["results"]
    steps = sorted({s for r in res.values() for s, _ in r["curve_1000_images"]})
    every = [s for s in steps if s % 2000 == 0] or steps
    head = ("| run | " + " | ".join(f"step {s}" for s in every) + " | end: steps | end: minutes | end: test elbo_bpd "
            "(10,000) | KL nats | swap → global class (cnn / logreg) | brightness / texture follow local |")
    lines = [head, "|" + "---|" * (len(every) + 7)]
    for name, r in res.items():
        c = dict(r["curve_1000_images"])
        cells = [f"{c[s]:.3f}" if s in c else "-" for s in every]
        kl = "-" if not r["kl_nats"] else f"{r['kl_nats']:.1f}"
        sw = r.get("swap_to_global_class")
        swap = f"{sw['cnn']:.3f} / {sw['logreg']:.3f}" if sw else "-"
        fl = r.get("follows_local")
        follow = f"{fl['brightness']:.2f} / {fl['texture']:.2f}" if fl else "-"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {r['steps']} | {r['train_minutes']} | "
                     f"{r['test_elbo_bpd']:.4f} | {kl} | {swap} | {follow} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--recipes", default="today,new")
    ap.add_argument("--minutes", type=float, default=60.0, help="training-step minutes per recipe")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-root", default="")
    ap.add_argument("--no-train", action="store_true", help="only score and plot the runs under --out")
    ap.add_argument("--also", action="append", default=[], metavar="NAME=RUN",
                    help="another finished run to score and plot beside the recipes (not trained here)")
    ap.add_argument("--out", default="runs/curve60")
    ap.add_argument("--plot", default="experiments/recipe_curve/results/curve.png")
    a = ap.parse_args(argv)
    out = Path(a.out)
    recipes = [r for r in a.recipes.split(",") if r]
    unknown = [r for r in recipes if r not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}; choose from {sorted(RECIPES)}")
    if not a.no_train:
        env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), PYTHONPATH=str(ROOT))
        procs = {}
        for r in recipes:
            d = out / r
            d.mkdir(parents=True, exist_ok=True)
            cmd = train_cmd(r, d, a)
            log = open(d / "train.log", "a")
            procs[r] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT), log)
            print(f"started {r}: {' '.join(cmd)}", flush=True)
        for r, (p, log) in procs.items():
            rc = p.wait()
            log.close()
            if rc:
                raise SystemExit(f"{r} failed (exit {rc}); see {out / r / 'train.log'}; rerun to resume it")
    missing = [r for r in recipes if not (out / r / "checkpoint.pt").exists()]
    if missing:
        raise SystemExit(f"no checkpoint for {missing} under {out}: train them first (without --no-train)")
    summary = {"setup": {"config": "configs/fashion_mnist.yaml", "minutes": a.minutes, "threads": a.threads},
               "results": {r: score(out / r, RECIPES[r]) for r in recipes}}
    for spec in a.also:
        name, _, run = spec.partition("=")
        if not run or not (Path(run) / "checkpoint.pt").exists():
            raise SystemExit(f"--also {spec!r}: expected NAME=RUN with a checkpoint in RUN")
        summary["results"][name] = score(Path(run), None)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(table(summary))
    if a.plot:
        plot(summary, Path(a.plot))
    return summary


if __name__ == "__main__":
    main()
