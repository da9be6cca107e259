"""Data-parallel training on CPU (gloo, 2 processes), through the real train() and the real CLI.

One 2-process run (torch.multiprocessing spawn; each worker makes the gloo group, then calls train())
feeds several tests: identical parameters on both ranks, the same loss trajectory as one process
with the same global batches, a NaN on one rank skipped by both, and sharded evaluation equal to a
single-process evaluation. A torchrun run with --max-restarts has a worker killed mid-way and must
resume from its checkpoint and finish; the run then continues in one process.
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from flowvae import FlowVAE, load_checkpoint, load_config
from flowvae.engine import distributed as D

from conftest import poisoned_loss

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
STEPS = 10
POISONED_STEP = 3  # 1-based: the step whose second micro-batch (rank 1's share) has a NaN loss
COMMON = [f"train.max_steps={STEPS}", "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=0",
          "train.eval_images=32", "train.threads=1", "train.warmup_steps=2", "train.lr=5e-3"]
EVAL = dict(k=2, batch_size=16, limit=72, seed=3)  # 72 images = 4.5 batches: the ranks get unequal shares
# Two processes in fp32 compute the same micro-batches with the same noise as one process with grad_accum=2
# (the same global batches, seed and data order); only the order of two float additions per gradient entry
# differs (all-reduce vs accumulation). Measured: the logged (float32) losses are identical at every one of
# the 10 steps. 1e-5 bits/dim leaves room for that rounding to grow, and is ~4 orders of magnitude below
# the loss change over the run and the effect of any real mismatch (other images, other noise, sum vs mean).
TRAJECTORY_TOL = 1e-5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str, result_dir: str) -> None:
    """One rank: gloo group, the real train(), then dump this rank's live parameters and a sharded evaluation."""
    import torch.distributed as dist

    from flowvae.data import load_dataset
    from flowvae.engine import train as T
    from flowvae.engine.evaluate import evaluate

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    live = {}
    real_update = T.EMA.update

    def update(self, model):  # capture the model this rank trains
        live["model"] = model
        return real_update(self, model)

    T.EMA.update = update
    if rank == 1:
        FlowVAE.loss = poisoned_loss({POISONED_STEP})  # one micro-batch per step per rank: rank 1's 3rd call is step 3
    cfg = load_config(TINY, COMMON)
    res = T.train(cfg, out, device="cpu", progress=False)
    state = {k: v.detach().clone() for k, v in live["model"].state_dict().items()}
    torch.save(state, Path(result_dir) / f"rank{rank}.pt")
    model, cfg, _ = load_checkpoint(out)
    ev = evaluate(model, load_dataset(cfg.data, cfg.model, "test"), progress=False, **EVAL)
    (Path(result_dir) / f"rank{rank}.json").write_text(json.dumps({"train": res, "eval": ev}))
    dist.destroy_process_group()


def tb_scalars(run: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-process run and its 1-process counterpart (grad_accum=2: the same micro-batches and noise)."""
    import torch.multiprocessing as mp

    base = tmp_path_factory.mktemp("ddp")
    t0 = time.time()
    mp.start_processes(_worker, args=(2, free_port(), str(base / "ddp"), str(base)), nprocs=2, start_method="spawn")
    t_ddp = time.time() - t0
    from flowvae.engine.train import train

    before = FlowVAE.loss
    try:
        FlowVAE.loss = poisoned_loss({2 * (POISONED_STEP - 1) + 2})  # one process, 2 micro-batches per step: step 3's second one
        single = train(load_config(TINY, COMMON + ["train.grad_accum=2"]), base / "single", device="cpu", progress=False)
    finally:
        FlowVAE.loss = before
    ranks = [json.loads((base / f"rank{r}.json").read_text()) for r in range(2)]
    return {"base": base, "ranks": ranks, "single": single, "t_ddp": t_ddp}


def test_parameters_identical_on_both_ranks(runs):
    a = torch.load(runs["base"] / "rank0.pt", weights_only=True)
    b = torch.load(runs["base"] / "rank1.pt", weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert all(r["train"]["rank_param_max_diff"] == 0.0 for r in runs["ranks"])
    # and they trained: the weights moved away from the (identical) initialisation
    _, _, state = load_checkpoint(runs["base"] / "ddp", ema=False)
    assert state["step"] == STEPS and state["world_size"] == 2
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in state["model"])
    assert any(not torch.equal(a[k], state["ema"][k]) for k in a if k in state["ema"])


def test_nan_on_one_rank_is_skipped_by_all(runs):
    for r in runs["ranks"]:
        assert r["train"]["skipped_steps"] == 1 and r["train"]["step"] == STEPS
    assert runs["single"]["skipped_steps"] == 1
    skipped = tb_scalars(runs["base"] / "ddp", "train/skipped_steps")
    assert skipped[POISONED_STEP - 1] == 0 and skipped[POISONED_STEP] == 1


def test_two_process_loss_trajectory_matches_one_process(runs):
    ddp = tb_scalars(runs["base"] / "ddp", "train/loss")
    one = tb_scalars(runs["base"] / "single", "train/loss")
    assert sorted(ddp) == sorted(one) == list(range(1, STEPS + 1))
    for step in ddp:
        if step == POISONED_STEP:  # the poisoned micro-batch makes both means NaN
            assert math.isnan(ddp[step]) and math.isnan(one[step])
            continue
        assert abs(ddp[step] - one[step]) < TRAJECTORY_TOL, (step, ddp[step], one[step])
    # the trajectory moves far more than the tolerance, so a wrong data split or gradient scale would show
    assert ddp[1] - ddp[STEPS] > 100 * TRAJECTORY_TOL
    elbo_ddp, elbo_one = tb_scalars(runs["base"] / "ddp", "train/elbo_bpd"), tb_scalars(runs["base"] / "single", "train/elbo_bpd")
    assert abs(elbo_ddp[STEPS] - elbo_one[STEPS]) < TRAJECTORY_TOL


def test_sharded_evaluation_equals_single_process(runs):
    from flowvae.data import load_dataset
    from flowvae.engine.evaluate import evaluate

    model, cfg, _ = load_checkpoint(runs["base"] / "ddp")
    one = evaluate(model, load_dataset(cfg.data, cfg.model, "test"), progress=False, **EVAL)
    for r in runs["ranks"]:
        two = dict(r["eval"])
        two.pop("seconds"), one.pop("seconds", None)
        assert two == one  # bitwise: same batches, same per-batch noise, sums added in batch order
    assert one["images"] == 72 and "iw2_bpd" in one and "active_units" in one


def test_rank_shares_make_the_same_global_batches():
    n, b = 100, 12
    for world in (1, 2, 4):
        for start in (0, 3):
            shares = [D.rank_indices(n, b, 7, 2, r, world, start_batch=start).view(-1, b // world) for r in range(world)]
            merged = torch.cat(shares, 1)
            ref = torch.stack(D.global_batch_indices(n, b, 7, 2)[start:])
            assert torch.equal(merged, ref)
    assert not torch.equal(torch.stack(D.global_batch_indices(n, b, 7, 2)), torch.stack(D.global_batch_indices(n, b, 7, 3)))
    with pytest.raises(ValueError, match="divisible"):
        D.micro_batch_size(32, 3, 1)
    assert D.micro_batch_size(32, 2, 4) == 4


def _children(pid: int) -> list[int]:
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(d))
    return kids


@pytest.mark.slow
def test_killed_worker_restarts_and_resumes_from_checkpoint(tmp_path):
    out = tmp_path / "run"
    steps = 60
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--max-restarts", "1",
           "-m", "flowvae", "train", "--config", str(TINY), "--out", str(out), "--resume", "--no-progress",
           f"train.max_steps={steps}", "train.checkpoint_every=10", "train.eval_every=0", "train.log_every=50",
           "train.eval_images=32"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env)
    try:
        deadline = time.time() + 120
        while not (out / "checkpoint.pt").exists() and time.time() < deadline and p.poll() is None:
            time.sleep(0.1)
        assert p.poll() is None, p.communicate()[0]
        workers = _children(p.pid)
        assert len(workers) == 2, workers
        os.kill(max(workers), signal.SIGKILL)  # a lost worker mid-run (the later-started one)
        log, _ = p.communicate(timeout=240)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, log
    resumed = [line for line in log.splitlines() if "resumed" in line and "at step" in line]
    assert resumed, log
    at = int(resumed[0].split("at step ")[1].split()[0])
    assert 10 <= at < steps  # from its last (periodic or crash) checkpoint, not from scratch
    _, _, state = load_checkpoint(out)
    assert state["step"] == steps and state["world_size"] == 2
    # the same run continues in one process (a different world size): same global batch sequence
    from flowvae.cli import main

    assert main(["train", "--out", str(out), "--resume", "--no-progress", "--device", "cpu", f"train.max_steps={steps + 3}"]) == 0
    _, _, state = load_checkpoint(out)
    assert state["step"] == steps + 3 and state["world_size"] == 1
    # `flowvae evaluate` under torchrun: sharded over 2 processes, equal to the one-process result
    two, one = tmp_path / "eval2.json", tmp_path / "eval1.json"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "flowvae", "evaluate", "--checkpoint", str(out), "--k", "2", "--limit", "40",
                        "--out", str(two)], capture_output=True, text=True, cwd=ROOT, env=env, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert main(["evaluate", "--checkpoint", str(out), "--k", "2", "--limit", "40", "--out", str(one)]) == 0
    a, b = json.loads(two.read_text()), json.loads(one.read_text())
    assert (a["processes"], b["processes"]) == (2, 1)
    for key in ("elbo_bpd", "iw2_bpd", "kl_nats", "active_units"):
        assert a[key] == b[key], key


def test_sharded_evaluation_counts_each_image_once():
    from flowvae.engine.evaluate import round_images

    batches = list(torch.split(torch.arange(64), 64))
    assert sum(round_images(batches, b, 2) for b in range(0, len(batches), 2)) == 64  # each image once, not twice
    batches = list(torch.split(torch.arange(138), 64))  # 64, 64, 10 over two ranks: rank 0 has 0 and 2
    assert [round_images(batches, b, 2) for b in (0, 2)] == [128, 10]
