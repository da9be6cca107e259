"""Decoupling analysis behind ``flowvae analyze``: what does the global code control?

    flowvae analyze --checkpoint runs/fm_hier                     # Fashion-MNIST (the run's data config)
    flowvae analyze --checkpoint runs/fm_hier --classifier runs/classifier.pt --pairs 2000

On a labelled dataset it reports (JSON + a printed table):

- ``classifier_test_acc``: a small CNN trained here on the training images (cached with
  ``--classifier``, so several models are judged by the same classifier);
- swap consistency: pairs (A, B) of test images of different classes, the swap
  ``swap(x_local=A, x_global=B)`` is labelled by the classifier; ``swap_to_global_class``
  is the fraction labelled as B's class (the code carries the class), ``swap_to_local_class``
  as A's (the local code carries it). For the hierarchical model ``swap_z_only_*`` also
  swaps the global z alone (the level latents z_l stay A's);
- linear probes: multinomial logistic regression (torch, L-BFGS, L2) trained on codes of
  training images, accuracy on test images, from the global code z, from the whole VAE code
  (hierarchical), from each level latent z_l, from eps and from raw pixels;
- per latent group: KL in nats and bits/dim, and active units (Cov_x(mu) > 0.01).

Randomness (classifier init, data order, pairs, the (z, u) draws of the KL) is seeded.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn
from ..data import iterate_batches
from ..errors import UsageError
from ..model import FlowVAE
from ..runtime import Progress


def _steps(items, desc: str, progress: bool, unit: str = "batch"):
    """Iterate ``items`` with a progress report (a bar on a terminal, plain lines in a log)."""
    items = list(items)
    bar = Progress(total=len(items), desc=desc, unit=unit, enabled=progress, leave=False)
    try:
        for item in items:
            yield item
            bar.update(1)
    finally:
        bar.close()

ACTIVE_VAR = 0.01


class SmallCNN(nn.Module):
    """The judge of the swaps: two conv blocks and an MLP head (0.87 test accuracy on Fashion-MNIST after
    the default 3 epochs; experiments/ablation/results)."""

    def __init__(self, channels: int, classes: int, image_size: tuple[int, int]):
        super().__init__()
        self.meta = {"channels": channels, "classes": classes, "image_size": list(image_size)}
        self.net = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, 128), nn.ReLU(), nn.Linear(128, classes),
        )

    def forward(self, x_uint8: Tensor) -> Tensor:
        return self.net(x_uint8.float() / 255.0 - 0.5)

    @torch.no_grad()
    def predict(self, x_uint8: Tensor, batch: int = 512) -> Tensor:
        self.eval()
        return torch.cat([self(x_uint8[i : i + batch]).argmax(1) for i in range(0, x_uint8.shape[0], batch)])


def _labels(ds, name: str) -> Tensor:
    labels = torch.as_tensor(ds.labels) if hasattr(ds, "labels") else None
    if labels is None or labels.numel() == 0 or bool((labels < 0).any()) or labels.unique().numel() < 2:
        raise UsageError(f"analyze needs a labelled dataset with at least 2 classes; the {name} split of "
                         f"{getattr(ds, 'name', 'this dataset')} has none (use e.g. data.dataset=fashion_mnist, "
                         f"or a folder with one subfolder per class)")
    return labels.long()


def _images(ds, n: int) -> tuple[Tensor, Tensor]:
    x, y = next(iterate_batches(ds, n, indices=torch.arange(min(n, len(ds)))))
    return x, torch.as_tensor(y).long()


def train_classifier(train_ds, test_ds, epochs: int = 3, batch_size: int = 128, seed: int = 0,
                     progress: bool = True) -> tuple[SmallCNN, float]:
    """Train the judge on the training split; returns it and its test accuracy."""
    labels = _labels(train_ds, "train")
    classes = int(labels.max()) + 1
    c, h, w = train_ds[torch.arange(1)][0].shape[1:]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        clf = SmallCNN(c, classes, (h, w))
    opt = torch.optim.Adam(clf.parameters(), lr=2e-3)
    steps = epochs * (len(train_ds) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=max(steps, 1))
    bar = Progress(total=steps, desc="classifier", unit="steps", enabled=progress, leave=False)
    clf.train()
    for epoch in range(epochs):
        for x, y in iterate_batches(train_ds, batch_size, shuffle=True, seed=seed, epoch=epoch, drop_last=True):
            loss = nn.functional.cross_entropy(clf(x), torch.as_tensor(y).long())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.set_postfix_str(f"loss {loss.item():.3f}")
            bar.update(1)
    bar.close()
    x_test, y_test = _images(test_ds, len(test_ds))
    acc = (clf.predict(x_test) == y_test).float().mean().item()
    return clf.eval(), acc


def load_or_train_classifier(path: Optional[Path], train_ds, test_ds, epochs: int, seed: int,
                             progress: bool) -> tuple[SmallCNN, float, str]:
    if path is not None and path.exists():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            clf = SmallCNN(state["meta"]["channels"], state["meta"]["classes"], tuple(state["meta"]["image_size"]))
            clf.load_state_dict(state["weights"])
        except Exception as e:  # a truncated or foreign file must not be half-used
            from ..checkpoint import _why_unreadable

            raise UsageError(f"{path}: not a flowvae analyze classifier ({_why_unreadable(e)}); delete it to retrain") from None
        x_test, y_test = _images(test_ds, len(test_ds))
        return clf.eval(), (clf.predict(x_test) == y_test).float().mean().item(), f"loaded {path}"
    clf, acc = train_classifier(train_ds, test_ds, epochs, seed=seed, progress=progress)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"meta": clf.meta, "weights": clf.state_dict()}, path)
    return clf, acc, f"trained ({epochs} epochs)" + (f", saved to {path}" if path is not None else "")


def fit_logistic(train_x: Tensor, train_y: Tensor, l2: float = 1e-3, iters: int = 200):
    """Multinomial logistic regression on standardised features (full-batch L-BFGS); returns a
    function from features to predicted labels."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    a = ((train_x - mean) / std).double()
    classes = int(train_y.max()) + 1
    lin = nn.Linear(a.shape[1], classes).double()
    nn.init.zeros_(lin.weight)
    nn.init.zeros_(lin.bias)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=iters, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(lin(a), train_y) + 0.5 * l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)

    @torch.no_grad()
    def predict(x: Tensor) -> Tensor:
        return lin(((x - mean) / std).double()).argmax(1)

    return predict


def linear_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, l2: float = 1e-3,
                 iters: int = 200) -> float:
    """Test accuracy of multinomial logistic regression on standardised features."""
    predict = fit_logistic(train_x, train_y, l2, iters)
    return (predict(test_x) == test_y).double().mean().item()


class PixelJudge:
    """The second, independent judge: logistic regression on raw pixels (a different model family
    from the CNN, so no swap number rests on one network)."""

    def __init__(self, x_uint8: Tensor, y: Tensor):
        self._predict = fit_logistic(x_uint8.flatten(1).float(), y)

    def predict(self, x_uint8: Tensor) -> Tensor:
        return self._predict(x_uint8.flatten(1).float())


def local_detail(x_uint8: Tensor) -> tuple[Tensor, Tensor]:
    """Per image, over its own foreground (pixels > 10): mean brightness, and texture = mean
    |x - 3x3 local mean| (print, stroke and fabric show up here; the silhouette mostly does not)."""
    x = x_uint8.float()
    fg = (x > 10).float()
    n = fg.flatten(1).sum(1).clamp_min(1)
    hp = (x - nn.functional.avg_pool2d(x, 3, 1, 1, count_include_pad=False)).abs()
    return (x * fg).flatten(1).sum(1) / n, (hp * fg).flatten(1).sum(1) / n


@torch.no_grad()
def _codes(model: FlowVAE, x: Tensor, batch: int, desc: str, progress: bool) -> tuple[Optional[Tensor], Tensor]:
    zs, es = [], []
    for i in _steps(range(0, x.shape[0], batch), desc, progress):
        z, eps = model.encode(x[i : i + batch])
        es.append(eps.flatten(1).cpu())
        if z is not None:
            zs.append(z.cpu())
    return (torch.cat(zs) if zs else None), torch.cat(es)


@torch.no_grad()
def _decode(model: FlowVAE, code: Tensor, eps: Tensor, batch: int) -> Tensor:
    return torch.cat([model.decode(code[i : i + batch], eps[i : i + batch]).cpu() for i in range(0, code.shape[0], batch)])


@torch.no_grad()
def _swaps(model: FlowVAE, xa: Tensor, xb: Tensor, z_only: bool, batch: int, progress: bool) -> Tensor:
    """swap(x_local=A, x_global=B); with ``z_only`` (hierarchical) only the global z comes from B and
    the level latents z_l stay A's."""
    out = []
    for i in _steps(range(0, xa.shape[0], batch), "swaps", progress):
        a, b = xa[i : i + batch], xb[i : i + batch]
        if not z_only:
            out.append(model.swap(a, b).cpu())
            continue
        code_a, eps_a = model.encode(a)
        mixed = model.latents.unflatten(code_a)
        mixed["global"] = model.latents.unflatten(model.encode(b)[0])["global"]
        out.append(model.decode(model.latents.flatten(mixed), eps_a).cpu())
    return torch.cat(out)


def _different_class_pairs(y: Tensor, n: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, y.shape[0], (4 * n,), generator=g)
    b = torch.randint(0, y.shape[0], (4 * n,), generator=g)
    keep = y[a] != y[b]
    a, b = a[keep][:n], b[keep][:n]
    if a.shape[0] < n:
        raise UsageError(f"could not find {n} test pairs of different classes")
    return a, b


@torch.no_grad()
def group_effects(model: FlowVAE, xa: Tensor, ya: Tensor, xb: Tensor, yb: Tensor, judges: dict, batch: int,
                  seed: int, progress: bool) -> tuple[dict, dict]:
    """What each latent group controls, on pairs (A, B) of test images of different classes.

    swap: the group from B, every other group and eps from A; reported: the fraction each judge labels
    as B's class and as A's, and how often the swap's brightness / texture (``local_detail``) is closer
    to A's than to B's (0.5 = no preference). ``code`` swaps every group at once (= ``FlowVAE.swap``).
    resample: the group re-drawn from its prior (temperature 1), the rest of A held; reported: the
    fraction of images whose label changes, and the mean absolute pixel change (0..255)."""
    groups = dict(model.latent_groups())
    if len(groups) > 1:
        groups = {"code": slice(0, model.code_dim), **groups}
    chunks = [model.encode(xa[i : i + batch]) for i in range(0, xa.shape[0], batch)]
    code_a, eps_a = torch.cat([c for c, _ in chunks]), torch.cat([e for _, e in chunks])
    code_b = torch.cat([model.encode(xb[i : i + batch])[0] for i in range(0, xb.shape[0], batch)])
    ref = {name: j.predict(xa) for name, j in judges.items()}
    bright_a, tex_a = local_detail(xa)
    bright_b, tex_b = local_detail(xb)
    swaps, resamples = {}, {}
    g = torch.Generator(device=code_a.device).manual_seed(seed)
    for name, sl in _steps(list(groups.items()), "swap/resample per group", progress, unit="group"):
        mixed = code_a.clone()
        mixed[:, sl] = code_b[:, sl]
        s = _decode(model, mixed, eps_a, batch)
        bright, tex = local_detail(s)
        swaps[name] = {
            "to_global_class": {j: (judge.predict(s) == yb).float().mean().item() for j, judge in judges.items()},
            "to_local_class": {j: (judge.predict(s) == ya).float().mean().item() for j, judge in judges.items()},
            "brightness_follows_local": ((bright - bright_a).abs() < (bright - bright_b).abs()).float().mean().item(),
            "texture_follows_local": ((tex - tex_a).abs() < (tex - tex_b).abs()).float().mean().item(),
        }
        if name == "code":
            continue
        new = torch.cat([model.resample_code(code_a[i : i + batch], name if name == "global" else int(name[len("level"):]),
                                             generator=g) for i in range(0, code_a.shape[0], batch)])
        r = _decode(model, new, eps_a, batch)
        resamples[name] = {
            "class_change": {j: (judge.predict(r) != ref[j]).float().mean().item() for j, judge in judges.items()},
            "mean_abs_pixel_change": (r.float() - xa.float()).abs().mean().item(),
        }
    return swaps, resamples


def analyze(model: FlowVAE, train_ds, test_ds, classifier: Optional[Path] = None, classifier_epochs: int = 3,
            pairs: int = 1000, probe_train: int = 10000, probe_test: int = 2000, kl_images: int = 2000,
            batch_size: int = 128, seed: int = 0, progress: bool = True) -> dict:
    start = time.time()
    model.eval()
    res: dict = {"model_type": model.cfg.type, "injection": model.cfg.injection if model.hybrid else None}
    _labels(test_ds, "test")
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(seed)
        clf, acc, how = load_or_train_classifier(classifier, train_ds, test_ds, classifier_epochs, seed, progress)
        res["classifier_test_acc"] = acc
        res["classifier"] = how
        xtr, ytr = _images(train_ds, probe_train)
        xte, yte = _images(test_ds, probe_test)

        if model.hybrid:
            x_all, y_all = _images(test_ds, len(test_ds))
            pixel_judge = PixelJudge(xtr, ytr)
            res["judges"] = {"cnn": acc, "logreg": (pixel_judge.predict(x_all) == y_all).float().mean().item()}
            ia, ib = _different_class_pairs(y_all, pairs, seed)
            res["swap_pairs"] = pairs
            swaps, resamples = group_effects(model, x_all[ia], y_all[ia], x_all[ib], y_all[ib],
                                             {"cnn": clf, "logreg": pixel_judge}, batch_size, seed, progress)
            res["swap"], res["resample"] = swaps, resamples
            # The headline numbers: every code group from B (FlowVAE.swap), judged by the CNN.
            full = swaps["code" if "code" in swaps else "global"]
            res["swap_to_global_class"] = full["to_global_class"]["cnn"]
            res["swap_to_local_class"] = full["to_local_class"]["cnn"]
            if model.hierarchical:
                res["swap_z_only_to_global_class"] = swaps["global"]["to_global_class"]["cnn"]
                res["swap_z_only_to_local_class"] = swaps["global"]["to_local_class"]["cnn"]

        # Linear probes from the codes (fitted on training images, scored on test images).
        ztr, etr = _codes(model, xtr, batch_size, "codes (train)", progress)
        zte, ete = _codes(model, xte, batch_size, "codes (test)", progress)
        feats = {"pixels": (xtr.flatten(1).float(), xte.flatten(1).float()), "eps": (etr, ete)}
        groups = model.latent_groups()
        if model.hybrid:
            feats["z"] = (ztr[:, groups["global"]], zte[:, groups["global"]])
            if model.hierarchical:
                feats["code"] = (ztr, zte)
                for name, sl in groups.items():
                    if name != "global":
                        feats[name] = (ztr[:, sl], zte[:, sl])
        for name, (a, b) in _steps(feats.items(), "linear probes", progress, unit="probes"):
            res[f"probe_acc_{name}"] = linear_probe(a, ytr, b, yte)
        res["probe_images"] = {"train": int(xtr.shape[0]), "test": int(xte.shape[0])}

        # KL and active units per latent group on test images (one (z, u) draw, like elbo_bpd).
        if model.hybrid:
            kls: dict[str, float] = {}
            mus = []
            n = 0
            xk, _ = _images(test_ds, kl_images)
            for i in range(0, xk.shape[0], batch_size):
                with torch.no_grad():
                    out = model.loss(xk[i : i + batch_size])
                for key, v in out.items():
                    if key.startswith("kl_") and key.endswith("_nats") and key != "kl_nats":
                        kls[key] = kls.get(key, 0.0) + v.double().sum().item()
                mus.append(out["z_mean"].cpu())
                n += out["z_mean"].shape[0]
            mu = torch.cat(mus)
            var = mu.var(0)
            per_group = {}
            for name, sl in groups.items():
                nats = kls[f"kl_{name}_nats"] / n
                per_group[name] = {"kl_nats": nats, "kl_bpd": model.bound.bpd(nats),
                                   "active_units": int((var[sl] > ACTIVE_VAR).sum()), "dims": sl.stop - sl.start}
            res["groups"] = per_group
            res["kl_images"] = n
    res["seconds"] = round(time.time() - start, 1)
    return res


def format_analysis(res: dict) -> str:
    lines = [f"classifier test accuracy: {res['classifier_test_acc']:.4f} ({res['classifier']})"]
    if "swap" in res:
        j = res["judges"]
        lines.append(f"judges' test accuracy: cnn {j['cnn']:.4f}, logreg (pixels) {j['logreg']:.4f}")
        lines.append(f"swap consistency over {res['swap_pairs']} pairs (A, B of different classes): the group from B, "
                     f"the rest and eps from A; the full code swap is FlowVAE.swap: labelled as B (global) "
                     f"{res['swap_to_global_class']:.4f}, as A (local) {res['swap_to_local_class']:.4f} (cnn)")
        lines.append(f"{'group':<8} {'swap->B cnn/lr':>15} {'swap->A cnn/lr':>15} {'bright~A':>9} {'texture~A':>10} "
                     f"{'resample: class chg cnn/lr':>27} {'|dpix|':>7}")
        for name, sw in res["swap"].items():
            rs = res["resample"].get(name)
            rcol = (f"{rs['class_change']['cnn']:.3f}/{rs['class_change']['logreg']:.3f}" if rs else "-")
            pcol = f"{rs['mean_abs_pixel_change']:.2f}" if rs else "-"
            lines.append(f"{name:<8} {sw['to_global_class']['cnn']:>7.3f}/{sw['to_global_class']['logreg']:.3f} "
                         f"{sw['to_local_class']['cnn']:>7.3f}/{sw['to_local_class']['logreg']:.3f} "
                         f"{sw['brightness_follows_local']:>9.3f} {sw['texture_follows_local']:>10.3f} "
                         f"{rcol:>27} {pcol:>7}")
    probes = [(k[len("probe_acc_"):], v) for k, v in res.items() if k.startswith("probe_acc_")]
    lines.append(f"linear probe test accuracy ({res['probe_images']['train']} train / {res['probe_images']['test']} test images):")
    lines += [f"  {name:<8} {v:.4f}" for name, v in probes]
    if "groups" in res:
        lines.append(f"{'group':<8} {'dims':>6} {'active':>7} {'KL nats':>10} {'KL bpd':>8}")
        for name, g in res["groups"].items():
            lines.append(f"{name:<8} {g['dims']:>6} {g['active_units']:>7} {g['kl_nats']:>10.2f} {g['kl_bpd']:>8.4f}")
    return "\n".join(lines)
