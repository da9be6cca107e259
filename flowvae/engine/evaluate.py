"""Test-set likelihood: ``elbo_bpd``, ``iw{K}_bpd``, each term of the bound, and active units.

Every reported number is a bound or an estimate of one and is named so:
``elbo_bpd`` is the single-sample negative ELBO, ``iw{K}_bpd`` the K-sample
importance-weighted bound (<= elbo_bpd in expectation), both in bits/dim.

Under torchrun (or any initialised process group) the evaluation is sharded: the images are cut
into the same batches as in one process, rank r evaluates batches r, r + W, ..., and the per-batch
sums and per-image statistics are reduced over ranks. With a ``seed`` the draws of (z, u) are keyed
by (seed, batch index), so the result is bitwise the single-process one whatever the number of
processes.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor
from ..data import iterate_batches
from ..model import FlowVAE
from ..runtime import Progress
from . import distributed as D

TERMS = ("elbo_bpd", "flow_bpd", "kl_bpd", "dequant_bpd", "kl_nats")


def model_terms(model: FlowVAE) -> tuple[str, ...]:
    """TERMS, plus the KL of each latent group (kl_global_nats, kl_level{l}_nats) for a hierarchical model."""
    if not getattr(model, "hierarchical", False):
        return TERMS
    return TERMS + tuple(f"kl_{name}_nats" for name in model.latent_groups())


@torch.no_grad()
def evaluate(model: FlowVAE, dataset, k: int = 1, batch_size: int = 64, limit: int = 0, progress: bool = True,
             seed: Optional[int] = 0, dist_info: Optional[D.DistInfo] = None) -> dict:
    """Mean per-image bounds over the first ``limit`` images of ``dataset`` (all if 0). With ``seed`` the
    draws of (z, u) are reproducible (keyed per batch) and the caller's random state is left untouched;
    with ``seed=None`` they come from the caller's generator. Every rank of a process group must call
    it (``dist_info`` defaults to the running group); every rank gets the reduced result."""
    info = dist_info if dist_info is not None else D.current()
    with torch.autocast(model.device.type, enabled=False):  # reported bounds are float32, even inside autocast
        if seed is None:
            return _evaluate(model, dataset, k, batch_size, limit, progress, None, info)
        devices = [model.device] if model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return _evaluate(model, dataset, k, batch_size, limit, progress, seed, info)


@torch.no_grad()
def bound_draws(model: FlowVAE, x: Tensor, seeds: Sequence[int], k: int = 1) -> Tensor:
    """Per-image bound in bits/dim of the uint8 images ``x`` per seed, ``[len(seeds), N]`` float64: with
    ``k=1`` the ELBO of one draw of (code, u), with ``k`` > 1 the importance-weighted bound over ``k`` draws
    (``FlowVAE.log_prob``, what ``evaluate`` reports as ``iw{k}_bpd``). Its spread over the seeds is how
    much an image's reported bound depends on the noise of the draw (under ``evaluate``, one odd image can
    move the mean of thousands). The caller's random state is left untouched."""
    if len(seeds) < 1:
        raise ValueError("bound_draws needs at least one seed")
    rows = []
    x = x.to(model.device)
    with torch.autocast(model.device.type, enabled=False), \
            torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        for s in seeds:
            torch.manual_seed(s)
            bpd = model.loss(x)["elbo_bpd"] if k == 1 else model.bound.bpd(-model.log_prob(x, k=k))
            rows.append(bpd.double().cpu())
    return torch.stack(rows)


def batch_seed(seed: int, batch: int) -> int:
    return (seed * 1_000_003 + batch) % (2**63 - 1)


def _batch_stats(model: FlowVAE, x: Tensor, k: int) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per-batch sums (float64 scalars) and per-image rows (e.g. the posterior means) of one batch."""
    out = model.loss(x)
    sums = {t: out[t].double().sum() for t in model_terms(model)}
    rows = {"elbo": out["elbo_bpd"].float()[:, None]}  # per image: one odd image can dominate a mean
    if k > 1:
        iw = model.bound.bpd(-model.log_prob(x, k=k)).double()
        sums[f"iw{k}_bpd"] = iw.sum()
        rows["iw"] = iw.float()[:, None]  # per image too: far less noisy than one draw's ELBO
    if model.hybrid:
        rows["mu"] = out["z_mean"].float()
    return sums, rows


def round_images(batches: list[Tensor], b: int, world: int) -> int:
    """Images the ranks evaluate in the round where this rank does batch ``b``: batches b .. b+W-1 (the
    last round may be short), so rank 0's bar counts every image once whatever the number of ranks."""
    return sum(len(batches[j]) for j in range(b, min(b + world, len(batches))))


def _evaluate(model: FlowVAE, dataset, k: int, batch_size: int, limit: int, progress: bool, seed: Optional[int],
              info: D.DistInfo) -> dict:
    if limit < 0 or k < 1:
        raise ValueError(f"evaluate needs limit >= 0 and k >= 1, got limit={limit}, k={k}")
    n = min(len(dataset), limit) if limit else len(dataset)
    dev = model.device
    batches = list(torch.split(torch.arange(n), batch_size))
    mine = list(D.shard_range(len(batches), info))
    keys = list(model_terms(model)) + ([f"iw{k}_bpd"] if k > 1 else [])
    batch_sums = torch.zeros(len(batches), len(keys), dtype=torch.float64, device=dev)
    rows: dict[str, list[Tensor]] = {}
    row_pos: list[int] = []
    start = time.time()
    bar = Progress(total=n, desc=f"evaluate (k={k})", unit="img", enabled=progress and info.is_main, leave=False)
    done = 0
    mine_idx = torch.cat([batches[b] for b in mine]) if mine else torch.zeros(0, dtype=torch.long)
    for b, (x, _) in zip(mine, iterate_batches(dataset, batch_size, indices=mine_idx)):
        if seed is not None:
            torch.manual_seed(batch_seed(seed, b))
        sums, per_image = _batch_stats(model, x, k)
        batch_sums[b] = torch.stack([sums[key] for key in keys]).to(dev)
        for name, r in per_image.items():
            rows.setdefault(name, []).append(r)
        row_pos.extend(batches[b].tolist())
        done += x.shape[0]
        bar.set_postfix_str(f"elbo_bpd {batch_sums[:, 0].sum().item() / max(done, 1):.4f} (rank 0)")
        bar.update(round_images(batches, b, info.world_size))
    bar.close()
    batch_sums = D.gather_rows(batch_sums[mine], mine, len(batches), info) if info.enabled else batch_sums
    totals = batch_sums.sum(0).tolist()  # summed in batch order: identical for any number of processes
    res = {key: totals[i] / n for i, key in enumerate(keys)}
    elbo_local = torch.cat(rows["elbo"]) if rows else torch.zeros(0, 1, device=dev)
    elbo = (D.gather_rows(elbo_local, row_pos, n, info) if info.enabled else elbo_local).cpu()[:, 0]
    res["elbo_bpd_median"] = elbo.median().item()
    res["elbo_bpd_max"], res["elbo_bpd_max_index"] = elbo.max().item(), int(elbo.argmax())
    if k > 1:  # the same for the importance-weighted bound of each image
        iw_local = torch.cat(rows["iw"]) if rows else torch.zeros(0, 1, device=dev)
        iw = (D.gather_rows(iw_local, row_pos, n, info) if info.enabled else iw_local).cpu()[:, 0]
        res[f"iw{k}_bpd_median"] = iw.median().item()
        res[f"iw{k}_bpd_max"], res[f"iw{k}_bpd_max_index"] = iw.max().item(), int(iw.argmax())
    if model.hybrid:
        if rows:
            mu_local = torch.cat(rows["mu"])
        else:  # this rank had no batch
            mu_local = torch.zeros(0, getattr(model, "code_dim", model.cfg.z_dim), device=dev)
        mu = D.gather_rows(mu_local, row_pos, n, info).cpu() if info.enabled else mu_local.cpu()
        var = mu.var(0) if mu.shape[0] > 1 else torch.zeros(mu.shape[1])
        groups = model.latent_groups()
        res["active_units"] = int((var[groups["global"]] > 0.01).sum())  # of the global code z
        res["z_dim"] = model.cfg.z_dim
        for name, sl in groups.items():
            if name != "global":  # hierarchical: each level latent z_l
                res[f"active_units_{name}"] = int((var[sl] > 0.01).sum())
                res[f"dims_{name}"] = sl.stop - sl.start
    res["images"] = n
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
