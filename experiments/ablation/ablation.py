"""The README's Fashion-MNIST ablations: flow-only Glow vs hybrids, one change at a time.

    python experiments/ablation/ablation.py --minutes 25 --out experiments/ablation/results      # Glow vs global z vs hierarchical z_l
    python experiments/ablation/ablation.py --models glow,global --minutes 25 --out experiments/ablation/equal_budget   # the README's hybrid-vs-Glow table
    python experiments/ablation/ablation.py --models glow,global,zmap,zmap_k31,zmap_k11,hier_zmap_fb \
        --minutes 75 --iw-limit 0 --out experiments/decoupling/results               # the decoupling levers (README)
    python experiments/ablation/ablation.py --models glow,global,mid,small,small_k11,hier_small \
        --minutes 72 --iw-limit 0 --out experiments/decoupling/frontier                 # decoder capacity against swap (README)

Trains configs/fashion_mnist.yaml, with the recipe the README's ablations were measured with
(``--config``, default configs/fashion_mnist_adamax.yaml: Adamax, EMA weights), once per variant (same flow: 2 levels x 8
steps x 128 channels, batch 64) for the same budget of training-step
wall-clock time (train.max_minutes), all variants at once, one CPU thread
each, so they share the machine alike (on a 2-core machine three runs get
about 2/3 of a core each). Then, per variant: elbo_bpd on the whole test set,
iw{K}_bpd on the first --iw-limit test images, samples, swap / reconstruction
/ resample-level grids, and ``flowvae analyze`` (one classifier, trained once
and cached in --out, judges every variant). Writes results.json and
results.md (the tables) to --out. ``--skip-train`` re-evaluates existing runs,
``--table-only`` rebuilds the tables from their JSON files.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

VARIANTS = {
    "glow": ["model.type=glow"],
    "global": ["model.type=hybrid", "model.injection=global"],
    "hierarchical": ["model.type=hybrid", "model.injection=hierarchical"],
    # The decoupling levers, one change at a time from the global hybrid:
    "zmap": ["model.type=hybrid", "model.z_maps=16"],
    "zmap_k31": ["model.type=hybrid", "model.z_maps=16", "model.coupling_kernels=[3,1]"],
    "zmap_k11": ["model.type=hybrid", "model.z_maps=16", "model.coupling_kernels=[1,1]"],
    "hier_zmap_fb": ["model.type=hybrid", "model.injection=hierarchical", "model.z_maps=16", "loss.level_free_bits=0.05"],
    # The decoder-capacity frontier (the Variational Lossy Autoencoder argument: a weaker flow leaves the
    # global structure to z), global injection throughout:
    "mid": ["model.type=hybrid", "model.steps=4", "model.hidden=64"],
    "small": ["model.type=hybrid", "model.steps=2", "model.hidden=32"],
    "small_k11": ["model.type=hybrid", "model.steps=2", "model.hidden=32", "model.coupling_kernels=[1,1]"],
    "hier_small": ["model.type=hybrid", "model.injection=hierarchical", "model.steps=2", "model.hidden=32",
                   "loss.level_free_bits=0.05"],
}
CHANGES = {
    "glow": "flow only (the bpd reference)",
    "global": "hybrid: z as a channel bias in every coupling and prior",
    "hierarchical": "+ a spatial z_l per Glow level",
    "zmap": "global + z decoded to a 16-channel map per level",
    "zmap_k31": "zmap + 1x1 couplings at the coarse level",
    "zmap_k11": "zmap + 1x1 couplings at both levels",
    "hier_zmap_fb": "zmap + a spatial z_l per level, 0.05 free nats per z_l dim",
    "mid": "global with a 2 x 4 x 64 flow",
    "small": "global with a 2 x 2 x 32 flow",
    "small_k11": "small + 1x1 couplings at both levels",
    "hier_small": "small + a spatial z_l per level, 0.05 free nats per z_l dim",
    # experiments/decoupling/frontier_beta.sh: the weakest decoders continued for 25 more minutes
    "small_more": "small, 25 min more (control)",
    "small_b03": "small, then KL weight 0.3 for 25 min more",
    "small_k11_b03": "small_k11, then KL weight 0.3 for 25 min more",
    # experiments/decoupling/decoupling_long.sh: the 75-minute runs continued to 110 minutes
    "global_b03": "global, then KL weight 0.3 for the last 35 min",
    "zmap_b03": "zmap, then KL weight 0.3 for the last 35 min",
}
# Earlier results directories name the global-injection hybrid "hybrid".
ALIASES = {"hybrid": "global"}


def run(cmd, log=None):
    print("+", " ".join(cmd), flush=True)
    if log is None:
        subprocess.run(cmd, check=True)
        return None
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="glow,global,hierarchical", help=f"comma-separated, from {', '.join(VARIANTS)}")
    ap.add_argument("--minutes", type=float, default=25, help="training-step wall-clock budget per model")
    ap.add_argument("--config", default="configs/fashion_mnist_adamax.yaml",
                    help="base config (default: the recipe the ablation tables were measured with)")
    ap.add_argument("--sequential", action="store_true", help="train one after the other with all cores")
    ap.add_argument("--out", default="experiments/ablation/results")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--iw-limit", type=int, default=2000, help="test images for the IW bound (0: skip it)")
    ap.add_argument("--no-analyze", action="store_true", help="skip flowvae analyze")
    ap.add_argument("--skip-train", action="store_true", help="only evaluate existing runs in --out")
    ap.add_argument("--table-only", action="store_true", help="only rebuild results.md / results.json from --out")
    ap.add_argument("--curve-windows", default="500-800,800-1100",
                    help="step windows over which the training-batch elbo_bpd (TensorBoard) is averaged per model")
    ap.add_argument("overrides", nargs="*", help="extra config overrides for every model")
    a = ap.parse_args()
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    for m in models:
        if ALIASES.get(m, m) not in VARIANTS and not (a.table_only or a.skip_train):
            ap.error(f"unknown model {m!r}; choose from {', '.join(VARIANTS)}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    fl = [sys.executable, "-m", "flowvae.cli"]
    if not (a.skip_train or a.table_only):
        procs = []
        for m in models:
            cmd = fl + ["train", "--config", a.config, "--out", str(out / m), "--no-progress",
                        *VARIANTS[ALIASES.get(m, m)], f"train.max_minutes={a.minutes}",
                        "train.max_steps=0", f"train.threads={-1 if a.sequential else 1}", *a.overrides]
            if (out / m / "checkpoint.pt").exists():
                cmd.append("--resume")  # an interrupted ablation continues where it stopped
            if a.sequential:
                run(cmd)
            else:
                procs.append(run(cmd, log=out / f"train_{m}.log"))
        for p in procs:
            if p.wait() != 0:
                sys.exit(f"training failed, see {out}/train_*.log")
    for m in [] if a.table_only else models:
        ck = str(out / m)
        hybrid = ALIASES.get(m, m) != "glow"
        run(fl + ["evaluate", "--checkpoint", ck, "--k", "1", "--out", str(out / m / "eval_full.json")])
        if a.iw_limit:
            run(fl + ["evaluate", "--checkpoint", ck, "--k", str(a.k), "--limit", str(a.iw_limit),
                      "--out", str(out / m / f"eval_iw{a.k}.json")])
        run(fl + ["sample", "--checkpoint", ck, "--n", "64", "--temperature", "0.7", "--out", str(out / f"samples_{m}.png")])
        if hybrid:
            run(fl + ["swap", "--checkpoint", ck, "--n", "8", "--out", str(out / f"swap_{m}.png")])
            run(fl + ["reconstruct", "--checkpoint", ck, "--n", "8", "--out", str(out / f"reconstruct_{m}.png")])
            run(fl + ["resample-level", "--checkpoint", ck, "--level", "all", "--n", "6", "--m", "7",
                      "--out", str(out / f"resample_{m}")])
        if not a.no_analyze:
            run(fl + ["analyze", "--checkpoint", ck, "--classifier", str(out / "classifier.pt"), "--no-progress",
                      "--out", str(out / m / "analysis.json")])
    windows = [tuple(int(v) for v in w.split("-")) for w in a.curve_windows.split(",") if w]
    write_tables(out, models, a.k, analyzed=not a.no_analyze, windows=windows)
    if not a.no_analyze:
        frontier_plot(out, models)


def train_curve_means(run: Path, windows: list) -> dict:
    """Mean training-batch elbo_bpd (logged every train.log_every steps) over each step window, from the
    run's TensorBoard log: the models compared per step rather than per minute."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    if "train/elbo_bpd" not in acc.Tags()["scalars"]:
        return {}
    points = [(e.step, e.value) for e in acc.Scalars("train/elbo_bpd")]
    means = {}
    for lo, hi in windows:
        vals = [v for s, v in points if lo <= s <= hi]
        if vals:
            means[f"{lo}-{hi}"] = sum(vals) / len(vals)
    return means


def write_tables(out: Path, models: list, k: int, analyzed: bool, windows: list = ()) -> None:
    """results.json and results.md from each run's train_metrics / eval / analysis JSON (and TensorBoard)."""
    rows = {}
    for m in models:
        full = json.loads((out / m / "eval_full.json").read_text())
        iw_path = out / m / f"eval_iw{k}.json"
        iw = json.loads(iw_path.read_text()) if iw_path.exists() else None
        tm = json.loads((out / m / "train_metrics.json").read_text())
        row = {"elbo_bpd": full["elbo_bpd"], "kl_bpd": full["kl_bpd"], "kl_nats": full["kl_nats"], "steps": tm["step"],
               "epochs": tm["epochs"], "train_minutes": tm["train_minutes"], "skipped_steps": tm["skipped_steps"],
               "test_images": full["images"]}
        for key in ("elbo_bpd_median", "elbo_bpd_max", "elbo_bpd_max_index"):
            if key in full:
                row[key] = full[key]
        if iw is not None:
            row.update({"elbo_bpd_subset": iw["elbo_bpd"], f"iw{k}_bpd_subset": iw[f"iw{k}_bpd"], "iw_images": iw["images"]})
        if analyzed:
            row["analysis"] = json.loads((out / m / "analysis.json").read_text())
        if windows and (out / m / "tb").is_dir():
            row["train_elbo_bpd_by_steps"] = train_curve_means(out / m, windows)
        rows[m] = row
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    if any("iw_images" not in r for r in rows.values()):
        lines = effect_tables(rows, models)
        (out / "results.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return
    first = rows[models[0]]
    n_iw = first["iw_images"]
    head = (f"| model | steps (epochs) | train min | test elbo_bpd (all {first['test_images']}) | "
            f"iw{k}_bpd (first {n_iw}) | elbo_bpd (same {n_iw}) | KL bits/dim (nats) |")
    cols = 7
    if analyzed:
        head += " swap → global class | swap → local class | probe acc. from z | probe acc. from ε |"
        cols += 4
    lines = [head, "|" + "---|" * cols]
    for m in models:
        r = rows[m]
        line = (f"| {m} | {r['steps']} ({r['epochs']:.2f}) | {r['train_minutes']:.1f} | {r['elbo_bpd']:.4f} | "
                f"{r[f'iw{k}_bpd_subset']:.4f} | {r['elbo_bpd_subset']:.4f} | {r['kl_bpd']:.4f} ({r['kl_nats']:.1f}) |")
        if analyzed:
            an = r["analysis"]
            f = lambda key: "-" if key not in an else f"{an[key]:.3f}"  # noqa: E731
            line += f" {f('swap_to_global_class')} | {f('swap_to_local_class')} | {f('probe_acc_z')} | {f('probe_acc_eps')} |"
        lines.append(line)
    if analyzed:
        lines += ["", "| model | latent group | dims | active units | KL nats | KL bits/dim | probe acc. from the group |",
                  "|---|---|---|---|---|---|---|"]
        for m in models:
            an = rows[m]["analysis"]
            for name, g in an.get("groups", {}).items():
                probe = an.get("probe_acc_" + ("z" if name == "global" else name))
                lines.append(f"| {m} | {name} | {g['dims']} | {g['active_units']} | {g['kl_nats']:.2f} | "
                             f"{g['kl_bpd']:.4f} | {probe:.3f} |")
        an = rows[models[0]]["analysis"]
        lines += ["", f"Classifier (judge of the swaps) test accuracy: {an['classifier_test_acc']:.4f}; "
                      f"linear probe from raw pixels: {an['probe_acc_pixels']:.3f} "
                      f"({an['probe_images']['train']} train / {an['probe_images']['test']} test images)."]
        for m in models:
            an = rows[m]["analysis"]
            if "swap_z_only_to_global_class" in an:
                lines.append(f"{m}: swapping the global z alone (z_l kept from the local image): labelled as the "
                             f"global image's class {an['swap_z_only_to_global_class']:.3f}, as the local image's "
                             f"{an['swap_z_only_to_local_class']:.3f}; probe from the whole code {an['probe_acc_code']:.3f}.")
    curves = {m: rows[m].get("train_elbo_bpd_by_steps") for m in models if rows[m].get("train_elbo_bpd_by_steps")}
    if curves:
        spans = list(next(iter(curves.values())))
        lines += ["", "Training-batch elbo_bpd (no EMA) averaged over step windows, per model: "
                  + "; ".join(f"{m} " + ", ".join(f"steps {w}: {c[w]:.3f}" for w in spans if w in c)
                              for m, c in curves.items()) + "."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def effect_tables(rows: dict, models: list) -> list:
    """The decoupling table: bound, and what each code group controls (flowvae analyze's swap / resample)."""
    ref = rows["glow"]["elbo_bpd"] if "glow" in rows else None
    lines = ["| model | change | steps | test elbo_bpd (median image) | vs glow | KL nats | swap → global class (cnn / logreg) | "
             "swap → local class (cnn / logreg) | brightness / texture follow local | probe z |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in models:
        r, an = rows[m], rows[m].get("analysis", {})
        d = "-" if ref is None or m == "glow" else f"{r['elbo_bpd'] - ref:+.3f}"
        sw = an.get("swap", {}).get("code") or an.get("swap", {}).get("global")
        cols = ("- | - | - | -" if sw is None else
                f"{sw['to_global_class']['cnn']:.3f} / {sw['to_global_class']['logreg']:.3f} | "
                f"{sw['to_local_class']['cnn']:.3f} / {sw['to_local_class']['logreg']:.3f} | "
                f"{sw['brightness_follows_local']:.2f} / {sw['texture_follows_local']:.2f} | {an['probe_acc_z']:.3f}")
        med = f" ({r['elbo_bpd_median']:.3f})" if "elbo_bpd_median" in r else ""
        lines.append(f"| {m} | {CHANGES.get(m, '')} | {r['steps']} | {r['elbo_bpd']:.4f}{med} | {d} | {r['kl_nats']:.1f} | {cols} |")
    lines += ["", "Per latent group (the group from B or re-drawn from its prior, everything else from A; "
              "class change and swap fractions by the CNN judge, the logistic-regression judge after the slash):", "",
              "| model | group | dims | active | KL nats | swap → B's class | swap → A's class | resample: class changes | "
              "resample: mean abs pixel change (0-255) |", "|---|---|---|---|---|---|---|---|---|"]
    for m in models:
        an = rows[m].get("analysis", {})
        for name, g in an.get("groups", {}).items():
            sw, rs = an["swap"][name], an["resample"][name]
            lines.append(f"| {m} | {name} | {g['dims']} | {g['active_units']} | {g['kl_nats']:.2f} | "
                         f"{sw['to_global_class']['cnn']:.3f} / {sw['to_global_class']['logreg']:.3f} | "
                         f"{sw['to_local_class']['cnn']:.3f} / {sw['to_local_class']['logreg']:.3f} | "
                         f"{rs['class_change']['cnn']:.3f} / {rs['class_change']['logreg']:.3f} | "
                         f"{rs['mean_abs_pixel_change']:.2f} |")
    an = next((rows[m]["analysis"] for m in models if "judges" in rows[m].get("analysis", {})), None)
    if an:
        lines += ["", f"Judges' test accuracy: CNN {an['judges']['cnn']:.4f}, logistic regression on pixels "
                      f"{an['judges']['logreg']:.4f}; {an['swap_pairs']} test pairs of different classes."]
    return lines


def frontier_plot(out: Path, models: list) -> None:
    """bpd against swap consistency, one point per model (frontier.png); needs matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no frontier.png (pip install matplotlib)")
        return
    rows = json.loads((out / "results.json").read_text())
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in models:
        r, an = rows[m], rows[m].get("analysis", {})
        sw = an.get("swap", {}).get("code") or an.get("swap", {}).get("global")
        if sw is None:
            ax.axhline(r["elbo_bpd"], color="grey", ls="--", lw=1)
            ax.annotate(f"{m} (no code)", (0.0, r["elbo_bpd"]), fontsize=8, va="bottom")
            continue
        ax.scatter(sw["to_global_class"]["cnn"], r["elbo_bpd"])
        ax.annotate(m, (sw["to_global_class"]["cnn"], r["elbo_bpd"]), fontsize=8, xytext=(4, 2), textcoords="offset points")
    ax.axvline(0.8, color="green", ls=":", lw=1)  # the goal: the class follows the code in 80% of swaps
    if "glow" in rows:  # ... at a bound no more than 0.05 bits/dim above the flow-only Glow's
        ax.axhline(rows["glow"]["elbo_bpd"] + 0.05, color="green", ls=":", lw=1)
    ax.set_xlabel("swap → global image's class (CNN judge)")
    ax.set_ylabel("test elbo_bpd (lower is better)")
    ax.set_xlim(0, 1)
    ax.set_title("bpd against swap consistency (same training budget)")
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=120)
    print(f"wrote {out / 'frontier.png'}")


if __name__ == "__main__":
    main()
