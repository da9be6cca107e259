"""Process groups, ranks, data sharding and reductions: what lets one training loop run as one process
or under ``torchrun`` unchanged.

    flowvae train --config configs/fashion_mnist.yaml --out runs/fm                           # one process
    torchrun --standalone --nproc_per_node 2 -m flowvae train --config ... --out runs/fm       # one node, 2 processes

``setup()`` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``),
picks the backend (NCCL when the device is CUDA, gloo on CPU) and the device (``cuda:LOCAL_RANK``
under torchrun on CUDA). Without those variables, or with ``WORLD_SIZE=1``, nothing is initialised
and every helper below is a no-op, so single-process code pays nothing. A process group initialised
by the caller (tests, notebooks) is used as it is and left for the caller to destroy.

Data order (a distributed sampler that works in global batches): the *global* batch sequence depends
only on (seed, epoch), never on the world size: epoch ``e`` is the permutation of
:func:`flowvae.data.iterate_batches` (reshuffled every epoch) cut into global batches of
``batch_size``. Each global batch is cut into ``world_size x grad_accum`` equal micro-batches, in
order; rank ``r`` takes micro-batches ``r*A .. r*A + A-1``. So micro-batch ``j`` of a step holds the
same images whatever the split between processes and accumulation, its noise is drawn from a
generator seeded by (seed, step, j) (:func:`step_seed`), and a checkpoint that records (epoch, global
batches consumed) resumes the same sequence with any number of processes: two processes with
``grad_accum=1`` compute what one process with ``grad_accum=2`` computes, up to the order of float
additions in the gradient all-reduce.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from ..errors import UsageError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None
    owns_group: bool = False  # setup() created the group, so teardown() destroys it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def setup(device: str = "auto", timeout_minutes: float = 30.0) -> DistInfo:
    """Initialise the process group if this process is one of several (torchrun, or a group the
    caller made), and choose this rank's device. ``device`` is ``auto | cpu | cuda | cuda:N``."""
    from ..runtime import resolve_device

    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        dev = _rank_device(resolve_device(device), local, world)
        return DistInfo(rank, world, local, dev, dist.get_backend(), owns_group=False)
    world = env_world_size()
    if world <= 1:
        return DistInfo(device=resolve_device(device))
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    dev = _rank_device(resolve_device(device), local, world)
    backend = backend_for(dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    kwargs = {"device_id": dev} if dev.type == "cuda" else {}
    timeout = datetime.timedelta(minutes=timeout_minutes)
    dist.init_process_group(backend, store=_store(rank, world, timeout), rank=rank, world_size=world, timeout=timeout,
                            **kwargs)
    return DistInfo(rank, world, local, dev, backend, owns_group=True)


def _store(rank: int, world: int, timeout: datetime.timedelta) -> "dist.Store":
    """The rendezvous store of ``env://`` (torchrun's agent store, or one rank 0 hosts at MASTER_ADDR:PORT),
    with the keys of each torchrun restart attempt under their own prefix. Without the prefix, the
    workers of a restart (``--max-restarts``) can find the gloo addresses the killed attempt left in
    the agent's store, connect to dead ports and fail or hang (seen with torch 2.14)."""
    host, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), int(os.environ.get("MASTER_PORT", "29500"))
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(host, port, world, is_master=(rank == 0 and not agent), timeout=timeout,
                          wait_for_workers=False, multi_tenant=not agent)
    return dist.PrefixStore(f"flowvae/attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def _rank_device(dev: torch.device, local_rank: int, world: int) -> torch.device:
    if dev.type == "cuda" and dev.index is None and world > 1:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are visible: "
                               f"start at most that many processes per node (torchrun --nproc_per_node)")
        return torch.device("cuda", local_rank)
    return dev


def teardown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------ collectives
def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce(t: Tensor, info: DistInfo, op: str = "sum") -> Tensor:
    """In place on every rank (a no-op in one process); ``op`` is sum | max | min | mean."""
    if not info.enabled:
        return t
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN, "mean": dist.ReduceOp.SUM}
    dist.all_reduce(t, op=ops[op])
    if op == "mean":
        t /= info.world_size
    return t


def broadcast_module(module: torch.nn.Module, info: DistInfo, src: int = 0) -> None:
    """Copy every parameter and buffer of rank ``src`` to all ranks (identical models before training)."""
    if not info.enabled:
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src)


@torch.no_grad()
def max_parameter_difference(module: torch.nn.Module, info: DistInfo) -> float:
    """Largest |difference| between any rank's parameters and rank 0's (0.0 in one process)."""
    if not info.enabled:
        return 0.0
    flat = torch.cat([p.detach().reshape(-1).double() for p in module.parameters()])
    ref = flat.clone()
    dist.broadcast(ref, 0)
    diff = torch.tensor([(flat - ref).abs().max().item()], dtype=torch.float64, device=flat.device)
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    return float(diff.item())


# ------------------------------------------------------------------------------ data sharding
def global_batch_indices(n: int, batch_size: int, seed: int, epoch: int) -> list[Tensor]:
    """The epoch's global batches (drop_last), in the order single-process training has always used."""
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    perm = torch.randperm(n, generator=g)
    return [b for b in torch.split(perm, batch_size) if len(b) == batch_size]


def rank_indices(n: int, batch_size: int, seed: int, epoch: int, rank: int, world: int, start_batch: int = 0) -> Tensor:
    """This rank's images for the rest of the epoch: its contiguous share ``b[rank*s:(rank+1)*s]``
    (``s = batch_size // world``) of every global batch from ``start_batch`` on, concatenated, so that
    consecutive batches of ``s`` images are its shares."""
    if batch_size % world:
        raise ValueError(f"global batch {batch_size} is not divisible by {world} processes")
    s = batch_size // world
    batches = global_batch_indices(n, batch_size, seed, epoch)[start_batch:]
    if not batches:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([b[rank * s:(rank + 1) * s] for b in batches])


def shard_range(num_items: int, info: DistInfo) -> range:
    """Items ``rank, rank + W, ...`` of ``range(num_items)`` (for sharding evaluation batches)."""
    return range(info.rank, num_items, info.world_size)


def micro_batch_size(batch_size: int, world: int, accum: int) -> int:
    if batch_size % (world * accum):
        raise UsageError(f"train.batch_size={batch_size} (the global batch) must be divisible by processes x "
                         f"train.grad_accum = {world} x {accum} = {world * accum}; change one of them")
    return batch_size // (world * accum)


def step_seed(seed: int, step: int, micro: int) -> int:
    """The RNG seed of (run seed, global step, global micro-batch index): every micro-batch (so every
    rank) draws different noise, and a resumed run, or one split differently over processes and
    accumulation steps, draws what an uninterrupted one would for the same images."""
    return ((seed * 1_000_003 + step) * 100_003 + micro) % (2**63 - 1)


def gather_rows(rows: Tensor, positions: Sequence[int], total: int, info: DistInfo) -> Tensor:
    """Assemble per-item rows computed on different ranks: rank r holds ``rows[i]`` for item
    ``positions[i]``; returns the ``[total, ...]`` tensor on every rank. Each item is written by exactly
    one rank and the others add zeros, so the result is bitwise what one process would hold."""
    out = torch.zeros((total, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    if len(positions):
        out[torch.as_tensor(list(positions), device=rows.device)] = rows
    return all_reduce(out, info, "sum")


def current() -> DistInfo:
    """The running process group as a DistInfo (world size 1 when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())),
                        backend=dist.get_backend())
    return DistInfo()
