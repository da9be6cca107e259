"""Per-image anomaly / out-of-distribution scores behind ``flowvae score`` and ``FlowVAE.score``.

    flowvae score --checkpoint runs/fm --out scores.csv                 # the run's test set
    flowvae score --checkpoint runs/fm --images my_pictures/ --out s.csv  # a folder of your own images

Every score is "higher = more anomalous", per image, in bits/dim:

- ``bpd``: the negative ELBO (mean over ``k`` draws of (z, u)); a bound, as ``elbo_bpd``;
- ``iw_bpd`` (with ``iw`` = K > 1): the importance-weighted bound over K draws, as ``evaluate``'s ``iwK_bpd``.
  Averaging draws of the ELBO lowers its noise by sqrt(k); the importance-weighted bound is also tighter, and
  holds still where one draw's ELBO does not (an image whose likelihood is much sharper along the code than
  its posterior is narrow: test image 8910 under ``pretrained:fashion_mnist``, experiments/bits_budget);
- ``global_bpd`` / ``local_bpd`` (hybrid models only): its two parts, the KL of the code (what it
  costs to say *which* image this is globally: the hybrid's "global surprise") and the rest
  (flow + dequantisation: the local detail given z). ``bpd = global_bpd + local_bpd``;
- ``complexity_bpd``: the PNG code length of the image (zlib, level 9, with PNG's ~60-byte header)
  in bits/dim: a generic, model-free measure of how much there is to say about it;
- ``ic_bpd = bpd - complexity_bpd``: the input-complexity correction of Serra et al. (2020). Flows give
  simple images (blank, smooth) high likelihood because they are cheap to code for *any* model;
  subtracting what a generic compressor needs removes that and leaves what is specific to the data.

With a ``reference`` model (``score_images(..., reference=ref)``, ``FlowVAE.score(x, reference=ref)``,
``flowvae score --reference CHECKPOINT``), two more:

- ``reference_bpd``: the reference model's bpd of the same image;
- ``lr_bpd = bpd - reference_bpd``: the likelihood ratio against a learned background model
  (Ren et al. 2019; Schirrmeister et al. 2020), the same idea as ``ic_bpd`` with a learned model in
  place of PNG. The reference should only be able to model *local* pixel statistics: a flow-only
  Glow with 1x1 couplings (``model.type=glow model.coupling_kernels=[1,1]``: each coupling and split
  prior sees one squeezed 2^l x 2^l block) trained on the same data. Smooth or blank images are cheap
  for both models, so the ratio cancels the local part and leaves what the full model knows about
  global structure. The reference must have the model's image shape and n_bits (else ValueError);
  it is scored with the same random draws (dequantisation noise) as the model, so the difference
  carries less Monte-Carlo noise and a model against itself scores exactly 0.

``global_bpd`` is the hybrid's own version of the ratio (the flow's local model is divided out).
``auroc`` and ``fpr_at_tpr`` are the evaluation metrics (anomalies are positives).
"""
from __future__ import annotations

import io
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from ..checks import check_draws

SPLIT_KEYS = ("global_bpd", "local_bpd")


def png_bits(x: Tensor) -> Tensor:
    """PNG code length of each uint8 image [N, C, H, W] in bits (float64 [N])."""
    from PIL import Image

    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"png_bits needs uint8 images [N, C, H, W], got {x.dtype} {list(x.shape)}")
    arr = x.cpu().permute(0, 2, 3, 1).numpy()
    out = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(buf, format="PNG", compress_level=9)
        out.append(8.0 * buf.tell())
    return torch.tensor(out, dtype=torch.float64)


def check_reference(model, reference) -> None:
    """ValueError unless ``reference`` can score the model's images (same image shape and n_bits)."""
    for attr in ("image_shape", "n_bits", "bound"):
        if not hasattr(reference, attr):
            raise TypeError(f"reference must be a FlowVAE (a loaded checkpoint), got {type(reference).__name__}")
    if tuple(reference.image_shape) != tuple(model.image_shape):
        raise ValueError(f"the reference model's image shape {list(reference.image_shape)} (C, H, W) differs from the "
                         f"model's {list(model.image_shape)}: train the reference on the same data (model.image_channels, "
                         f"model.image_size)")
    if reference.n_bits != model.n_bits:
        raise ValueError(f"the reference model's n_bits={reference.n_bits} differs from the model's n_bits={model.n_bits}: "
                         f"their bits/dim are not comparable; train the reference with model.n_bits={model.n_bits}")


def _bound(model, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(negative ELBO, KL of the code) per image in bits/dim (``Bound.terms``), float64 CPU [N], mean over k draws."""
    x_int = model._prepare(x)
    total = torch.zeros(x_int.shape[0], dtype=torch.float64, device=x_int.device)
    kl = torch.zeros_like(total)
    with torch.autocast(model.device.type, enabled=False):
        for _ in range(k):
            bpd = model.bound.terms(model.terms(x_int))
            total += bpd["elbo_bpd"].double()
            kl += bpd["kl_bpd"].double()
    return (total / k).cpu(), (kl / k).cpu()


def check_iw(iw) -> int:
    """The ``iw`` of ``score_images``: 0 (no ``iw_bpd``) or a number of draws in 2..MAX_IW_DRAWS."""
    if iw == 0:
        return 0
    iw = check_draws(iw, "iw")
    if iw < 2:
        raise ValueError("iw=1 is one draw's ELBO, the bpd score: pass 0 (no iw_bpd) or a number of draws above 1")
    return iw


@torch.no_grad()
def score_images(model, x: Tensor, k: int = 1, split: Optional[bool] = None, reference=None,
                 iw: int = 0) -> dict[str, Tensor]:
    """Per-image scores of uint8 images ``x`` [N, C, H, W] (see the module docstring), float32 CPU [N].
    ``split``: include ``global_bpd`` / ``local_bpd`` (default: when the model is a hybrid; True on a
    flow-only model is an error: it has no global code to split off). ``reference``: a second model
    (a local background flow) for ``reference_bpd`` and ``lr_bpd``. ``iw`` > 1: also ``iw_bpd``, the
    importance-weighted bound over ``iw`` draws."""
    k = check_draws(k)
    iw = check_iw(iw)
    if split is None:
        split = model.hybrid
    if split and not model.hybrid:
        raise ValueError("a global/local split needs a global code: this is a flow-only (model.type=glow) model; "
                         "its scores are bpd, complexity_bpd and ic_bpd")
    ref_bpd = None
    if reference is not None:
        check_reference(model, reference)
        # common random numbers: the reference runs on a fork of the RNG state the model then starts from
        cuda = sorted({d.index or 0 for d in (model.device, reference.device) if d.type == "cuda"})
        with torch.random.fork_rng(devices=cuda):
            ref_bpd, _ = _bound(reference, x, k)
    bpd, kl = _bound(model, x, k)
    out = {"bpd": bpd}
    if iw > 1:
        with torch.autocast(model.device.type, enabled=False):
            out["iw_bpd"] = model.bound.bpd(-model.log_prob(x, k=iw)).double().cpu()
    if split:
        out["global_bpd"] = kl
        out["local_bpd"] = bpd - kl
    out["complexity_bpd"] = png_bits(x.cpu()) / model.num_dims
    out["ic_bpd"] = bpd - out["complexity_bpd"]
    if ref_bpd is not None:
        out["reference_bpd"] = ref_bpd
        out["lr_bpd"] = bpd - ref_bpd
    return {key: v.float() for key, v in out.items()}


def score_dataset(model, ds, k: int = 1, batch_size: int = 256, limit: int = 0, split: Optional[bool] = None,
                  progress: bool = False, reference=None, iw: int = 0) -> tuple[dict[str, Tensor], Tensor]:
    """``score_images`` over a dataset (the first ``limit`` images if > 0); returns (scores, labels).
    ``reference``: a local background model (adds ``reference_bpd`` and ``lr_bpd``)."""
    from ..data import iterate_batches
    from ..runtime import Progress

    if reference is not None:
        check_reference(model, reference)
    n = len(ds) if not limit else min(limit, len(ds))
    parts: dict[str, list] = {}
    labels = []
    bar = Progress(total=n, desc=f"score (k={k})", unit="img", enabled=progress, leave=False)
    for x, y in iterate_batches(ds, batch_size, indices=torch.arange(n)):
        for key, v in score_images(model, x, k=k, split=split, reference=reference, iw=iw).items():
            parts.setdefault(key, []).append(v)
        labels.append(torch.as_tensor(y))
        bar.update(len(y))
    bar.close()
    return {key: torch.cat(v) for key, v in parts.items()}, torch.cat(labels)


def auroc(normal: Tensor, anomalous: Tensor) -> float:
    """Area under the ROC curve with anomalies as positives (higher score = more anomalous): the
    probability that an anomaly scores above a normal image, ties counting half (Mann-Whitney U)."""
    a = torch.as_tensor(normal, dtype=torch.float64).flatten()
    b = torch.as_tensor(anomalous, dtype=torch.float64).flatten()
    if a.numel() == 0 or b.numel() == 0:
        raise ValueError("auroc needs at least one normal and one anomalous score")
    allv = torch.cat([a, b])
    # average ranks (ties get the mean rank), then U = rank sum of the anomalies - n_b (n_b + 1) / 2
    order = torch.argsort(allv, stable=True)
    sorted_v = allv[order]
    ranks = torch.empty_like(allv)
    uniq, inverse, counts = torch.unique_consecutive(sorted_v, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks[order] = mean_rank[inverse]
    u = ranks[a.numel():].sum() - b.numel() * (b.numel() + 1) / 2
    return float(u / (a.numel() * b.numel()))


def fpr_at_tpr(normal: Tensor, anomalous: Tensor, tpr: float = 0.95) -> float:
    """False-positive rate (normal images flagged) at the threshold that flags ``tpr`` of the anomalies."""
    a = np.asarray(torch.as_tensor(normal, dtype=torch.float64))
    b = np.asarray(torch.as_tensor(anomalous, dtype=torch.float64))
    # the largest threshold t with mean(b >= t) >= tpr is b's (1 - tpr) quantile taken from below
    thr = np.sort(b)[int(np.floor((1 - tpr) * len(b)))]
    return float((a >= thr).mean())
