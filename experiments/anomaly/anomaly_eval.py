"""Anomaly-scoring evaluation (README, "Anomaly scores"): AUROC and FPR at 95% TPR per score.

    python experiments/anomaly/anomaly_eval.py --train --runs runs/anomaly --out experiments/anomaly
    python experiments/anomaly/anomaly_eval.py --runs runs/anomaly --model hybrid_big=/path/run --model shipped=pretrained:fashion_mnist

Two kinds of test, on real Fashion-MNIST test images (the normal set is the first --n of them):

* simpler / corrupted copies of those images: ``constant`` (each image a flat grey at its own mean),
  ``near_blank`` (the image at 10% contrast), ``inverted``, ``hflip``, ``vflip``, ``noise`` (Gaussian,
  std 80 pixel values), ``blur`` (torchvision's gaussian_blur, kernel 7, sigma 2.5);
* leave-one-class-out: a model trained on 9 classes (``data.exclude_classes=[c]``); its normal set is
  the first --n test images of the 9 classes, the anomalies are the 1000 test images of class c.

Scores (higher = more anomalous; flowvae/uses/score.py): ``bpd``, ``ic_bpd`` (input-complexity correction),
``global_bpd`` (hybrid: KL of the code), ``typicality`` = |bpd - median bpd of 1000 training
images| (a per-image form of the typicality test: both too-likely and too-unlikely inputs are flagged)
and, for the hybrid, ``global_typicality`` = |global_bpd - its training median| (the code's KL is
*lower* than usual on most anomalies: the encoder maps unfamiliar inputs near the prior mean), and
``lr_bpd`` = bpd - bpd of a *local* reference flow (Schirrmeister et al. 2020): a flow-only Glow with
1x1 couplings and split priors (``model.coupling_kernels=[1,1]``: it sees one 2x2 / 4x4 block at a
time, so it models local pixel statistics only), trained on the same data: ``local`` for the
all-class models and ``local_loo{c}`` (which never sees class c) for the leave-one-class-out ones;
its two-sided form ``lr_typicality`` = |lr_bpd - its training median|, and ``ic_lr`` = ic_bpd +
lr_typicality (both corrections at once, unweighted: both are bits/dim).

``--train`` first trains the missing runs under --runs (and continues shorter ones), one after the
other, each with configs/quickstart.yaml sizes (2 levels x 4 steps x 64, z 32) on full Fashion-MNIST
with one thread, for --steps steps: ``hybrid``, ``glow``, ``local`` and ``{hybrid,glow,local}_loo{c}``
(a run already at --steps with its train_metrics.json is left as it is).
Writes results.json and results.md to --out.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from flowvae import load_checkpoint, load_config  # noqa: E402
from flowvae.data import load_dataset  # noqa: E402
from flowvae.uses.score import auroc, fpr_at_tpr, score_images  # noqa: E402

COMMON = ["data.dataset=fashion_mnist", "train.threads=1", "train.eval_every=0", "train.eval_images=500"]
KEYS = ("bpd", "ic_bpd", "lr_bpd", "lr_typicality", "ic_lr", "global_bpd", "typicality", "global_typicality")
LOCAL = ["model.type=glow", "model.coupling_kernels=[1,1]"]  # the reference: a flow that only sees local blocks
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def corrupt(x: torch.Tensor, seed: int = 0) -> dict:
    from torchvision.transforms.functional import gaussian_blur

    g = torch.Generator().manual_seed(seed)
    xf = x.float()
    return {
        "constant": xf.mean((1, 2, 3), keepdim=True).expand_as(xf).round().to(torch.uint8),
        "near_blank": (xf * 0.1).round().to(torch.uint8),
        "inverted": 255 - x,
        "hflip": x.flip(3),
        "vflip": x.flip(2),
        "noise": (xf + 80 * torch.randn(x.shape, generator=g)).round().clamp(0, 255).to(torch.uint8),
        "blur": gaussian_blur(xf, [7, 7], [2.5, 2.5]).round().clamp(0, 255).to(torch.uint8),
    }


def train_missing(runs: Path, classes, steps: int) -> None:
    from flowvae.checkpoint import read_checkpoint
    from flowvae.engine.train import train

    jobs = [("hybrid", []), ("glow", ["model.type=glow"]), ("local", LOCAL)]
    for c in classes:
        jobs += [(f"hybrid_loo{c}", [f"data.exclude_classes=[{c}]"]),
                 (f"glow_loo{c}", ["model.type=glow", f"data.exclude_classes=[{c}]"]),
                 (f"local_loo{c}", LOCAL + [f"data.exclude_classes=[{c}]"])]
    for name, extra in jobs:
        ckpt = runs / name / "checkpoint.pt"
        if ckpt.exists() and (runs / name / "train_metrics.json").exists() and read_checkpoint(ckpt)["step"] >= steps:
            continue
        cfg = load_config(ROOT / "configs" / "quickstart.yaml",
                          COMMON + ["train.max_minutes=0", f"train.max_steps={steps}"] + extra)
        train(cfg, runs / name, resume=ckpt.exists(), progress=False)


def scores_of(model, x: torch.Tensor, reference=None, batch: int = 500) -> dict:
    parts: dict = {}
    for i in range(0, x.shape[0], batch):
        for k, v in score_images(model, x[i : i + batch], reference=reference).items():
            parts.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in parts.items()}


def with_typicality(s: dict, ref: dict) -> dict:
    s = dict(s)
    s["typicality"] = (s["bpd"] - ref["bpd"]).abs()
    if "global_bpd" in s:
        s["global_typicality"] = (s["global_bpd"] - ref["global_bpd"]).abs()
    if "lr_bpd" in s:
        s["lr_typicality"] = (s["lr_bpd"] - ref["lr_bpd"]).abs()
        s["ic_lr"] = s["ic_bpd"] + s["lr_typicality"]
    return s


def means(s: dict) -> dict:
    """Mean bpd of a set (and of the reference model, when there is one)."""
    return {"mean_bpd": float(s["bpd"].mean())} | (
        {"mean_reference_bpd": float(s["reference_bpd"].mean())} if "reference_bpd" in s else {})


def metrics(normal: dict, anomalous: dict) -> dict:
    keys = [k for k in KEYS if k in normal]
    return {k: {"auroc": auroc(normal[k], anomalous[k]), "fpr95": fpr_at_tpr(normal[k], anomalous[k])} for k in keys}


def evaluate_model(path, n: int, loo_class=None, reference_path=None) -> dict:
    # the reference first: building a model draws from the RNG, and the model's own scores should not
    # depend on whether a reference is given (score_images runs the reference on a fork of the RNG)
    reference = load_checkpoint(reference_path)[0] if reference_path is not None else None
    torch.manual_seed(0)
    model, cfg, state = load_checkpoint(path)
    data = load_config(None, ["data.dataset=fashion_mnist"]).data
    train_ds = load_dataset(data, cfg.model, "train")
    test_ds = load_dataset(data, cfg.model, "test")
    xtr, ytr = train_ds.images, torch.as_tensor(train_ds.labels)
    xte, yte = test_ds.images, torch.as_tensor(test_ds.labels)
    if loo_class is not None:
        xtr = xtr[ytr != loo_class]
    ref = {k: float(v.median()) for k, v in scores_of(model, xtr[:1000], reference).items()}
    out = {"checkpoint": str(path), "step": state.get("step"), "train_minutes": round(state.get("train_seconds", 0) / 60, 2),
           "type": cfg.model.type, "size": f"{cfg.model.levels}x{cfg.model.steps}x{cfg.model.hidden}",
           "reference": str(reference_path) if reference_path is not None else None, "train_median": ref, "sets": {}}
    if loo_class is None:
        x = xte[:n]
        normal = with_typicality(scores_of(model, x, reference), ref)
        out |= {f"normal_{k}": v for k, v in means(normal).items()}
        for name, xc in corrupt(x).items():
            s = with_typicality(scores_of(model, xc, reference), ref)
            out["sets"][name] = metrics(normal, s) | means(s)
    else:
        normal = with_typicality(scores_of(model, xte[yte != loo_class][:n], reference), ref)
        s = with_typicality(scores_of(model, xte[yte == loo_class], reference), ref)
        out |= {f"normal_{k}": v for k, v in means(normal).items()}
        out["sets"][f"class {loo_class} ({CLASSES[loo_class]})"] = metrics(normal, s) | means(s)
    return out


def table(results: dict) -> str:
    rows = ["| model | steps | anomaly set | mean bpd (normal → set) | reference bpd (normal → set) | "
            + " | ".join(f"{k} AUROC / FPR95" for k in KEYS) + " |",
            "|---|---|---|---|---|" + "---|" * len(KEYS)]
    for name, r in results.items():
        for sname, m in r["sets"].items():
            cells = []
            for k in KEYS:
                cells.append(f"{m[k]['auroc']:.3f} / {m[k]['fpr95']:.3f}" if k in m else "-")
            refb = f"{r['normal_mean_reference_bpd']:.2f} → {m['mean_reference_bpd']:.2f}" if "mean_reference_bpd" in m else "-"
            rows.append(f"| {name} | {r['step']} | {sname} | {r['normal_mean_bpd']:.2f} → {m['mean_bpd']:.2f} | {refb} | "
                        + " | ".join(cells) + " |")
    return "\n".join(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="runs/anomaly", help="where the quickstart-size runs are (or --train puts them)")
    ap.add_argument("--train", action="store_true", help="train the missing runs first (sequentially)")
    ap.add_argument("--classes", default="0,5,8", help="held-out classes for leave-one-class-out")
    ap.add_argument("--steps", type=int, default=800, help="training steps per run (with --train)")
    ap.add_argument("--n", type=int, default=2000, help="normal test images")
    ap.add_argument("--model", action="append", default=[], metavar="NAME=RUN",
                    help="also evaluate another all-class run on the corrupted sets (e.g. a longer-trained one; "
                         "pretrained:fashion_mnist for the shipped model), against the reference runs/local")
    ap.add_argument("--out", default="experiments/anomaly")
    a = ap.parse_args()
    torch.set_num_threads(1)
    runs, out = Path(a.runs), Path(a.out)
    classes = [int(c) for c in a.classes.split(",") if c]
    if a.train:
        train_missing(runs, classes, a.steps)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    jobs = [(n, runs / n, None, runs / "local") for n in ("hybrid", "glow")]
    jobs += [(f"{t}_loo{c}", runs / f"{t}_loo{c}", c, runs / f"local_loo{c}") for c in classes for t in ("hybrid", "glow")]
    jobs += [(spec.split("=", 1)[0], spec.split("=", 1)[1], None, runs / "local") for spec in a.model]
    for name, run, c, local in jobs:
        if not str(run).startswith("pretrained:"):
            run = Path(run)
            if not (run / "checkpoint.pt").exists():
                print(f"skip {name}: no checkpoint in {run}")
                continue
        if not (local / "checkpoint.pt").exists():
            print(f"{name}: no reference checkpoint in {local}: no lr_bpd")
            local = None
        t = time.time()
        results[name] = evaluate_model(run, a.n, c, local)
        print(f"{name}: {time.time() - t:.0f} s", flush=True)
        path.write_text(json.dumps(results, indent=1))
    md = table(results)
    (out / "results.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
