"""Factor-VAE TC penalty evaluation (README, "Factor-VAE total-correlation penalty").

    python experiments/tc/tc_eval.py --train --runs runs/anomaly --classifier experiments/restore/results/classifier.pt --out experiments/tc

Per gamma (``loss.tc_weight``; gamma 0 is the ``hybrid`` run of experiments/anomaly/anomaly_eval.py): a
configs/quickstart.yaml-size hybrid (2 levels x 4 steps x 64, z 32) trained on full Fashion-MNIST for
--steps steps with one thread (``--train`` trains the missing ones); then

* TC of the aggregate posterior of the global code, two ways (flowvae/tc.py ``estimate_tc``): a fresh
  discriminator (the same recipe for every gamma) fitted on codes of 10,000 training images and
  averaged on codes of 2,000 test images, and the Gaussian approximation;
* ``elbo_bpd`` (k=1) on the first 2,000 test images: the true bound, whatever gamma;
* ``flowvae analyze``: active units, KL, swap consistency (1,000 pairs, judged by --classifier) and
  linear probes (5,000 train / 2,000 test codes).
Writes results.json and results.md.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from flowvae import load_checkpoint, load_config  # noqa: E402
from flowvae.data import load_dataset  # noqa: E402
from flowvae.engine.analyze import analyze  # noqa: E402
from flowvae.engine.evaluate import evaluate  # noqa: E402
from flowvae.tc import estimate_tc  # noqa: E402

COMMON = ["data.dataset=fashion_mnist", "train.threads=1", "train.eval_every=0", "train.eval_images=500"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs/anomaly")
    ap.add_argument("--gammas", default="0,10,50")
    ap.add_argument("--steps", type=int, default=800, help="training steps (as the gamma=0 run)")
    ap.add_argument("--train", action="store_true", help="train the missing runs first (sequentially)")
    ap.add_argument("--name0", default="hybrid", help="the gamma=0 run's directory name under --runs")
    ap.add_argument("--classifier", default="experiments/restore/results/classifier.pt")
    ap.add_argument("--out", default="experiments/tc")
    a = ap.parse_args()
    torch.set_num_threads(1)
    runs, out = Path(a.runs), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    gammas = [float(g) for g in a.gammas.split(",")]
    name = lambda g: a.name0 if g == 0 else f"tc{g:g}"  # noqa: E731
    if a.train:
        from flowvae.engine.train import train

        for g in gammas:
            run = runs / name(g)
            if not (run / "train_metrics.json").exists():
                cfg = load_config(ROOT / "configs" / "quickstart.yaml",
                                  COMMON + ["train.max_minutes=0", f"train.max_steps={a.steps}"]
                                  + ([f"loss.tc_weight={g:g}"] if g else []))
                train(cfg, run, resume=(run / "checkpoint.pt").exists(), progress=False)
    data = load_config(None, ["data.dataset=fashion_mnist"]).data
    res = {}
    for g in gammas:
        run = runs / name(g)
        model, cfg, state = load_checkpoint(run)
        train_ds, test_ds = load_dataset(data, cfg.model, "train"), load_dataset(data, cfg.model, "test")
        tc = estimate_tc(model, train_ds.images[:10000], test_ds.images[:2000], steps=2000)
        ev = evaluate(model, test_ds, k=1, limit=2000, progress=False, seed=0)
        an = analyze(model, train_ds, test_ds, classifier=Path(a.classifier), pairs=1000, probe_train=5000,
                     probe_test=2000, kl_images=2000, progress=False)
        res[f"{g:g}"] = {"run": str(run), "step": state["step"], "train_minutes": round(state["train_seconds"] / 60, 2),
                         **tc, "elbo_bpd": ev["elbo_bpd"], "kl_bpd": ev["kl_bpd"], "kl_nats": ev["kl_nats"],
                         "active_units": an["groups"]["global"]["active_units"],
                         "swap_to_global_class": an["swap_to_global_class"], "swap_to_local_class": an["swap_to_local_class"],
                         "probe_acc_z": an["probe_acc_z"], "probe_acc_eps": an["probe_acc_eps"]}
        print(g, res[f"{g:g}"], flush=True)
        (out / "results.json").write_text(json.dumps(res, indent=1))
    lines = ["| γ (tc_weight) | steps | TC, discriminator (nats) | TC, Gaussian (nats) | test elbo_bpd | KL nats | active units (of 32) "
             "| swap → global class | swap → local class | probe acc. z | probe acc. ε |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for g, r in res.items():
        lines.append(f"| {g} | {r['step']} | {r['tc_disc_nats']:.2f} | {r['tc_gauss_nats']:.2f} | {r['elbo_bpd']:.4f} | "
                     f"{r['kl_nats']:.1f} | {r['active_units']} | {r['swap_to_global_class']:.3f} | "
                     f"{r['swap_to_local_class']:.3f} | {r['probe_acc_z']:.3f} | {r['probe_acc_eps']:.3f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
