"""Sample quality: the Fréchet distance between a model's samples and test images, in the feature space
of the judge CNN that ``flowvae analyze`` trains (engine/analyze.py).

    flowvae fid --checkpoint pretrained:fashion_mnist --classifier runs/classifier.pt \\
        --temperatures 0.5,0.7,1.0 --n 10000

The distance is the one of Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a
Local Nash Equilibrium" (FID): fit a Gaussian to the features of each set and take
``|mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2))``. It is computed by torchmetrics'
``FrechetInceptionDistance`` with the judge's penultimate layer (128 features after the ReLU) as its
feature extractor, so no Inception weights are needed and nothing is downloaded. The numbers are not
comparable to a published (Inception) FID: they compare models judged by the same classifier file.
Where the user has the Inception v3 weights of the usual FID (torch-fidelity's ``pt_inception-2015-12-05``
file, passed as ``inception_weights``), the same code computes the usual FID with torchmetrics' own Inception
extractor instead (grey images repeated to three channels, resized to 299 by torchmetrics).
The test images' features are computed once and reused across temperatures.
"""
from __future__ import annotations

import time
from typing import Iterable, Optional, Sequence

import torch
from torch import Tensor, nn

from ..data import iterate_batches
from ..model import FlowVAE
from ..runtime import Progress
from .analyze import SmallCNN


class JudgeFeatures(nn.Module):
    """The judge CNN up to its last hidden layer: uint8 images [N, C, H, W] -> [N, 128] float features."""

    def __init__(self, judge: SmallCNN):
        super().__init__()
        self.body = judge.net[:-1]  # everything but the class logits
        self.num_features = judge.net[-1].in_features  # what torchmetrics reads to size its sums
        self.eval()

    def train(self, mode: bool = True) -> "JudgeFeatures":
        return super().train(False)  # a fixed feature extractor, never in training mode

    @torch.no_grad()
    def forward(self, x_uint8: Tensor) -> Tensor:
        if x_uint8.dtype != torch.uint8:
            raise TypeError(f"the judge's features take uint8 images (0..255), got {x_uint8.dtype}")
        return self.body(x_uint8.float() / 255.0 - 0.5)


def _metric(judge: Optional[SmallCNN], inception_weights: Optional[str] = None):
    """The judge's features, or with ``inception_weights`` (a file) torchmetrics' Inception v3 (2048 features)."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except ImportError:  # an optional dependency: say how to get it instead of a traceback
        raise ImportError("the Fréchet distance needs torchmetrics: pip install 'flowvae[quality]' "
                          "(or pip install torchmetrics)") from None
    if inception_weights is not None:
        return FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=str(inception_weights),
                                        reset_real_features=False)
    return FrechetInceptionDistance(feature=JudgeFeatures(judge), reset_real_features=False)


def _update(metric, batches: Iterable[Tensor], real: bool, rgb: bool = False) -> int:
    """Feed uint8 batches; ``rgb`` repeats grey images to the three channels Inception takes."""
    n = 0
    for x in batches:
        x = x.cpu()
        metric.update(x.expand(-1, 3, -1, -1) if rgb and x.shape[1] == 1 else x, real=real)
        n += x.shape[0]
    return n


def _test_batches(dataset, n: int, batch_size: int):
    for x, _ in iterate_batches(dataset, batch_size, indices=torch.arange(n)):
        yield x


def _sample_batches(model: FlowVAE, n: int, temperature: float, batch_size: int, bar: Progress):
    for i in range(0, n, batch_size):
        x = model.sample(min(batch_size, n - i), temperature)
        bar.update(x.shape[0])
        yield x


def frechet_distance(judge: SmallCNN, a: Iterable[Tensor], b: Iterable[Tensor]) -> float:
    """The distance between two sets of uint8 images (each an iterable of batches) in the judge's features."""
    metric = _metric(judge)
    if _update(metric, a, real=True) < 2 or _update(metric, b, real=False) < 2:
        raise ValueError("a Fréchet distance needs at least 2 images in each set")
    return float(metric.compute())


@torch.no_grad()
def sample_fid(model: FlowVAE, dataset, judge: Optional[SmallCNN], temperatures: Sequence[float] = (1.0,),
               n: int = 10000, batch_size: int = 250, seed: int = 0, progress: bool = True,
               inception_weights: Optional[str] = None) -> dict:
    """The Fréchet distance between ``n`` samples at each temperature (of the local code eps; the global
    code at temperature 1, as ``flowvae sample`` draws it) and the first ``n`` images of ``dataset``.
    Returns ``{"n", "seed", "fid": {T: distance}, "best_temperature", "best_fid", "seconds"}``. The draws
    are seeded per temperature (the same ``seed`` and ``batch_size`` give the same samples) and the
    caller's random state is left untouched. With ``inception_weights`` the features are Inception v3's (the
    usual FID) and ``judge`` is not used; the result says which (``features``)."""
    if n < 2 or n > len(dataset):
        raise ValueError(f"n must be in 2..{len(dataset)} (the images of the reference set), got {n}")
    if not temperatures:
        raise ValueError("give at least one temperature")
    start = time.time()
    model.eval()
    if judge is None and inception_weights is None:
        raise ValueError("give the judge CNN or the Inception weights to take the features from")
    rgb = inception_weights is not None
    metric = _metric(judge, inception_weights)
    _update(metric, _test_batches(dataset, n, batch_size), real=True, rgb=rgb)
    fids = {}
    for t in temperatures:
        metric.reset()  # the fake features only (reset_real_features=False)
        bar = Progress(total=n, desc=f"fid T={t:g}", unit="img", enabled=progress, leave=False)
        with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
            torch.manual_seed(seed)
            _update(metric, _sample_batches(model, n, t, batch_size, bar), real=False, rgb=rgb)
        bar.close()
        fids[float(t)] = float(metric.compute())
    best = min(fids, key=fids.get)
    return {"n": n, "seed": seed, "features": "inception" if rgb else "judge", "fid": fids,
            "best_temperature": best, "best_fid": fids[best], "seconds": round(time.time() - start, 2)}


def format_fid(res: dict) -> str:
    rows = [f"  T={t:<5g} {d:10.4f}" + ("   <- best" if t == res["best_temperature"] else "") for t, d in res["fid"].items()]
    where = "Inception v3's features (the usual FID)" if res.get("features") == "inception" else "the judge's features"
    return f"Fréchet distance in {where}, {res['n']} samples vs {res['n']} test images\n" + "\n".join(rows)
