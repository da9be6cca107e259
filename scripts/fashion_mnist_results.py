"""Reproduce the README's Fashion-MNIST results table: hybrid vs flow-only Glow at equal wall-clock budget.

    python scripts/fashion_mnist_results.py --minutes 25 --parallel --out results/fashion_mnist

Trains configs/fashion_mnist.yaml twice, as ``model.type=hybrid`` and
``model.type=glow`` (same flow: 2 levels x 8 steps x 128 channels), each for
the same budget of training-step wall-clock time (train.max_minutes). With
``--parallel`` both run at once with one CPU thread each (a 2-core machine:
one core per model); without it they run one after the other with all cores.
Then evaluates each EMA model on the Fashion-MNIST test set (elbo_bpd on all
10,000 images, iw{K}_bpd on the first --iw-limit images), writes sample and
swap grids, and writes results.json and results.md to --out.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

MODELS = ("glow", "hybrid")


def run(cmd, log=None):
    print("+", " ".join(cmd), flush=True)
    if log is None:
        subprocess.run(cmd, check=True)
        return None
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=25)
    ap.add_argument("--parallel", action="store_true")
    ap.add_argument("--out", default="results/fashion_mnist")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--iw-limit", type=int, default=2000)
    ap.add_argument("--skip-train", action="store_true", help="only evaluate existing runs in --out")
    ap.add_argument("overrides", nargs="*", help="extra config overrides for both models")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    fl = [sys.executable, "-m", "flowvae.cli"]
    threads = 1 if a.parallel else 0
    if not a.skip_train:
        procs = []
        for m in MODELS:
            cmd = fl + ["train", "--config", "configs/fashion_mnist.yaml", "--out", str(out / m), "--no-progress",
                        f"model.type={m}", f"train.max_minutes={a.minutes}", f"train.threads={threads}", *a.overrides]
            if a.parallel:
                procs.append(run(cmd, log=out / f"train_{m}.log"))
            else:
                run(cmd)
        for p in procs:
            if p.wait() != 0:
                sys.exit(f"training failed, see {out}/train_*.log")
    rows = {}
    for m in MODELS:
        ck = str(out / m)
        run(fl + ["evaluate", "--checkpoint", ck, "--k", "1", "--out", str(out / m / "eval_full.json")])
        run(fl + ["evaluate", "--checkpoint", ck, "--k", str(a.k), "--limit", str(a.iw_limit),
                  "--out", str(out / m / f"eval_iw{a.k}.json")])
        run(fl + ["sample", "--checkpoint", ck, "--n", "64", "--temperature", "0.7", "--out", str(out / f"samples_{m}.png")])
        if m == "hybrid":
            run(fl + ["swap", "--checkpoint", ck, "--n", "8", "--out", str(out / "swap_hybrid.png")])
            run(fl + ["reconstruct", "--checkpoint", ck, "--n", "8", "--out", str(out / "reconstruct_hybrid.png")])
        full = json.loads((out / m / "eval_full.json").read_text())
        iw = json.loads((out / m / f"eval_iw{a.k}.json").read_text())
        tm = json.loads((out / m / "train_metrics.json").read_text())
        rows[m] = {"elbo_bpd": full["elbo_bpd"], "elbo_bpd_subset": iw["elbo_bpd"], f"iw{a.k}_bpd_subset": iw[f"iw{a.k}_bpd"],
                   "kl_bpd": full["kl_bpd"], "active_units": full.get("active_units"), "steps": tm["step"],
                   "epochs": tm["epochs"], "train_minutes": tm["train_minutes"], "skipped_steps": tm["skipped_steps"],
                   "test_images": full["images"], "iw_images": iw["images"]}
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    n_iw = rows["glow"]["iw_images"]
    lines = [f"| model | steps (epochs) | train min | test elbo_bpd (all {rows['glow']['test_images']}) | "
             f"elbo_bpd (first {n_iw}) | iw{a.k}_bpd (first {n_iw}) | kl_bpd | active units |",
             "|---|---|---|---|---|---|---|---|"]
    for m in MODELS:
        r = rows[m]
        au = "-" if r["active_units"] is None else r["active_units"]
        lines.append(f"| {m} | {r['steps']} ({r['epochs']:.2f}) | {r['train_minutes']:.1f} | {r['elbo_bpd']:.4f} | "
                     f"{r['elbo_bpd_subset']:.4f} | {r[f'iw{a.k}_bpd_subset']:.4f} | {r['kl_bpd']:.4f} | {au} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
