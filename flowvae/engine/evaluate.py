"""Test-set likelihood: ``elbo_bpd``, ``iw{K}_bpd``, each term of the bound, and active units.

Every reported number is a bound or an estimate of one and is named so:
``elbo_bpd`` is the single-sample negative ELBO, ``iw{K}_bpd`` the K-sample
importance-weighted bound (<= elbo_bpd in expectation), both in bits/dim.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from ..data import iterate_batches
from ..model import FlowVAE
from ..objective import nats_to_bpd

TERMS = ("elbo_bpd", "flow_bpd", "kl_bpd", "dequant_bpd", "kl_nats")


@torch.no_grad()
def evaluate(model: FlowVAE, dataset, k: int = 1, batch_size: int = 64, limit: int = 0, progress: bool = True,
             seed: Optional[int] = 0) -> dict:
    """Mean per-image bounds over the first ``limit`` images of ``dataset`` (all if 0). With ``seed`` the
    draws of (z, u) are reproducible and the caller's random state is left untouched."""
    if seed is None:
        return _evaluate(model, dataset, k, batch_size, limit, progress)
    devices = [model.device] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return _evaluate(model, dataset, k, batch_size, limit, progress)


def _evaluate(model: FlowVAE, dataset, k: int, batch_size: int, limit: int, progress: bool) -> dict:
    if limit < 0 or k < 1:
        raise ValueError(f"evaluate needs limit >= 0 and k >= 1, got limit={limit}, k={k}")
    n = min(len(dataset), limit) if limit else len(dataset)
    sums = {t: 0.0 for t in TERMS}
    iw_sum, mus, count = 0.0, [], 0
    start = time.time()
    bar = tqdm(total=n, desc=f"evaluate (k={k})", unit="img", disable=not progress, leave=False)
    for x, _ in iterate_batches(dataset, batch_size, indices=torch.arange(n)):
        out = model.loss(x)
        for t in TERMS:
            sums[t] += out[t].double().sum().item()
        if k > 1:
            iw_sum += nats_to_bpd(model.log_prob(x, k=k), model.num_dims).double().sum().item()
        if model.hybrid:
            mus.append(out["z_mean"].cpu())
        count += x.shape[0]
        bar.update(x.shape[0])
        bar.set_postfix(elbo_bpd=f"{sums['elbo_bpd'] / count:.4f}")
    bar.close()
    res = {t: sums[t] / count for t in TERMS}
    if k > 1:
        res[f"iw{k}_bpd"] = iw_sum / count
    if model.hybrid:
        mu = torch.cat(mus)
        var = mu.var(0) if mu.shape[0] > 1 else torch.zeros(mu.shape[1])
        res["active_units"] = int((var > 0.01).sum())
        res["z_dim"] = int(mu.shape[1])
    res["images"] = count
    res["k"] = k
    res["seconds"] = round(time.time() - start, 2)
    return res


def format_table(res: dict) -> str:
    rows = [(key, f"{v:.4f}" if isinstance(v, float) else str(v)) for key, v in res.items()]
    w = max(len(r[0]) for r in rows)
    line = "-" * (w + 14)
    return "\n".join([line, f"{'metric':<{w}}  value", line, *[f"{a:<{w}}  {b}" for a, b in rows], line])


def write_json(res: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in res.items()}, indent=2))
