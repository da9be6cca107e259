"""Inpainting and denoising evaluation (README, "Inpainting and denoising"): PSNR and judge accuracy.

    python experiments/restore/restore_eval.py --model hybrid=runs/anomaly/hybrid --model glow=runs/anomaly/glow \
        --classifier /path/classifier.pt --out experiments/restore/results

On the first --n Fashion-MNIST test images, per model:

* inpainting with the built-in masks (bottom half, centre square, random 50% of pixels): PSNR on the
  masked pixels of the most likely completion (``inpaint``'s MAP run, --steps Adam steps), against the
  mean-fill baseline (the training set's per-pixel mean); and the judge classifier's accuracy on the
  completed images vs on the masked ones (missing pixels set to 0) and the mean-filled ones;
* denoising: Gaussian noise (std 25 and 50) scored on all pixels, salt-and-pepper (10% and 30% of
  pixels) scored on the hit pixels; the model's MAP against the noisy input and a 3x3 median filter.

The judge is flowvae analyze's SmallCNN (``--classifier``: loaded if it exists, else trained 3 epochs
on Fashion-MNIST and saved there). PNG grids of the first 8 images go to --out (inpaint_<mask>_<model>.png:
truth, masked, MAP, 2 random-start completions; denoise_<noise>_<model>.png: clean, noisy, median, model).
Writes results.json and results.md.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from flowvae import load_checkpoint, load_config  # noqa: E402
from flowvae.data import load_dataset  # noqa: E402
from flowvae.uses import restore  # noqa: E402
from flowvae.engine.analyze import load_or_train_classifier  # noqa: E402
from flowvae.visualize import save_grid  # noqa: E402

MASKS = ("bottom", "centre", "random")
NOISES = {"gauss25": ("sigma", 25.0), "gauss50": ("sigma", 50.0), "sp10": ("sp", 0.1), "sp30": ("sp", 0.3)}


def batched(fn, x, *rest, batch=64):
    return torch.cat([fn(x[i : i + batch], *(r[i : i + batch] for r in rest)) for i in range(0, x.shape[0], batch)])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", required=True, metavar="NAME=RUN")
    ap.add_argument("--classifier", default="experiments/restore/results/classifier.pt")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--masks", default=",".join(MASKS))
    ap.add_argument("--noises", default=",".join(NOISES))
    ap.add_argument("--out", default="experiments/restore/results")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None, ["data.dataset=fashion_mnist"])
    train_ds, test_ds = load_dataset(cfg.data, cfg.model, "train"), load_dataset(cfg.data, cfg.model, "test")
    clf, clf_acc, how = load_or_train_classifier(Path(a.classifier), train_ds, test_ds, 3, 0, False)
    x, y = test_ds.images[: a.n], torch.as_tensor(test_ds.labels[: a.n]).long()
    mean_img = train_ds.images.float().mean(0)
    acc = lambda imgs: float((clf.predict(imgs) == y).float().mean())  # noqa: E731
    path = out / "results.json"
    res = json.loads(path.read_text()) if path.exists() else {}
    res["judge"] = {"test_acc": clf_acc, "how": how, "acc_on_these_images": acc(x), "images": a.n, "steps": a.steps}
    g = torch.Generator().manual_seed(0)
    masks = {k: restore.builtin_mask(k, (1, 28, 28), a.n, 0.5, generator=g) for k in MASKS if k in a.masks.split(",")}
    noisy = {}
    for k, (kind, v) in NOISES.items():
        if k not in a.noises.split(","):
            continue
        if kind == "sigma":
            noisy[k] = (restore.add_gaussian_noise(x, v, generator=g), torch.ones_like(x, dtype=torch.bool))
        else:
            noisy[k] = restore.add_salt_pepper(x, v, generator=g)
    for spec in a.model:
        name, run = spec.split("=", 1)
        torch.manual_seed(0)
        model, mcfg, state = load_checkpoint(run)
        r = {"checkpoint": run, "size": f"{mcfg.model.levels}x{mcfg.model.steps}x{mcfg.model.hidden}", "type": mcfg.model.type,
             "step": state.get("step"), "inpaint": {}, "denoise": {}}
        t = time.time()
        for k, m in masks.items():
            filled = batched(lambda xb, mb: model.inpaint(xb, mb, steps=a.steps)["map"], x, m)
            assert torch.equal(filled[~m], x[~m])  # observed pixels bit-exact
            mf = restore.mean_fill(x, m, mean_img)
            r["inpaint"][k] = {"psnr_model": restore.psnr(filled, x, m), "psnr_mean_fill": restore.psnr(mf, x, m),
                               "acc_model": acc(filled), "acc_masked": acc(torch.where(m, torch.zeros_like(x), x)),
                               "acc_mean_fill": acc(mf)}
            sm = model.inpaint(x[:8], m[:8], samples=2, steps=a.steps, seed=0)
            grid = torch.stack([x[:8], torch.where(m[:8], torch.full_like(x[:8], 128), x[:8]), sm["map"], *sm["samples"]], 1)
            save_grid(grid.flatten(0, 1), out / f"inpaint_{k}_{name}.png", nrow=5)
            print(name, k, r["inpaint"][k], f"{time.time() - t:.0f} s", flush=True)
        for k, (xn, hit) in noisy.items():
            kind, v = NOISES[k]
            if kind == "sigma":
                den = batched(lambda xb: model.denoise(xb, sigma=v, steps=a.steps), xn)
            else:
                den = batched(lambda xb: model.denoise(xb, salt_pepper=True, steps=a.steps), xn)
            med = restore.median_filter(xn)
            r["denoise"][k] = {"psnr_noisy": restore.psnr(xn, x, hit), "psnr_median": restore.psnr(med, x, hit),
                               "psnr_model": restore.psnr(den, x, hit), "acc_noisy": acc(xn), "acc_median": acc(med),
                               "acc_model": acc(den)}
            save_grid(torch.stack([x[:8], xn[:8], med[:8], den[:8]], 1).flatten(0, 1), out / f"denoise_{k}_{name}.png", nrow=4)
            print(name, k, r["denoise"][k], f"{time.time() - t:.0f} s", flush=True)
        r["seconds"] = round(time.time() - t)
        res[name] = r
        path.write_text(json.dumps(res, indent=1))
    lines = [f"Judge (SmallCNN) test accuracy {res['judge']['test_acc']:.4f}; on these {a.n} clean images "
             f"{res['judge']['acc_on_these_images']:.3f}. {a.steps} Adam steps per image.", "",
             "| model | mask | PSNR masked px: model | mean fill | judge acc: completed | masked (0) | mean fill |",
             "|---|---|---|---|---|---|---|"]
    models = [k for k in res if k != "judge"]
    for name in models:
        for k, v in res[name]["inpaint"].items():
            lines.append(f"| {name} | {k} | {v['psnr_model']:.2f} | {v['psnr_mean_fill']:.2f} | {v['acc_model']:.3f} | "
                         f"{v['acc_masked']:.3f} | {v['acc_mean_fill']:.3f} |")
    lines += ["", "| model | noise | PSNR noised px: noisy | median 3x3 | model | judge acc: noisy | median | model |",
              "|---|---|---|---|---|---|---|---|"]
    for name in models:
        for k, v in res[name]["denoise"].items():
            lines.append(f"| {name} | {k} | {v['psnr_noisy']:.2f} | {v['psnr_median']:.2f} | {v['psnr_model']:.2f} | "
                         f"{v['acc_noisy']:.3f} | {v['acc_median']:.3f} | {v['acc_model']:.3f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
