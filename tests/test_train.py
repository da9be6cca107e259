"""The training engine (flowvae/engine: schedule.py, ema.py, step.py, loop.py, train.py): the lr as a function
of the step, planned step counts, reproducible resumes however fast each part ran, skipped non-finite steps,
budgets, EMA, checkpoints that survive a full disk, and the shipped configs.

Every test that runs a full train() uses configs/tiny.yaml for a handful of steps without periodic
evaluation (a few seconds each); the longer ones are marked slow."""
from __future__ import annotations

import errno
import json
import math
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from flowvae import ConfigError, FlowVAE, load_checkpoint, load_config
from flowvae.checkpoint import read_checkpoint, save_checkpoint
from flowvae.cli import main
from flowvae.engine.schedule import MIN_PLANNING_STEPS, get_lr, plan_steps, resumed_plan
from flowvae.engine.train import EMA, build_optimizer, train

from conftest import poisoned_loss

pytestmark = pytest.mark.usefixtures("single_thread")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = CONFIGS / "tiny.yaml"
FAST = ["train.eval_every=0", "train.checkpoint_every=0", "train.eval_images=32", "train.max_steps=8"]
QUIET = ["--no-progress", "train.eval_every=0", "train.eval_images=32"]


def train_cfg(*overrides: str):
    return load_config(None, overrides=list(overrides)).train


def error_of(capsys, *argv) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
    return err


# ------------------------------------------------------------------ the lr: a function of the step
def test_warmup_is_linear_then_constant_and_optimizers():
    t = train_cfg("train.warmup_steps=4", "train.lr=1e-2")
    assert [get_lr(s, t, 100) for s in range(6)] == [2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2]
    assert get_lr(10**6, t, None) == 1e-2  # constant: needs no plan
    model = FlowVAE.from_config(load_config(TINY).model)
    assert isinstance(build_optimizer(load_config(TINY), model), torch.optim.Adamax)
    cfg = load_config(TINY, ["train.optimizer=adamw", "train.weight_decay=0.01"])
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["weight_decay"] == 0.01


def test_cosine_starts_after_warmup_and_ends_at_zero():
    t = train_cfg("train.warmup_steps=10", "train.lr=1e-3", "train.lr_schedule=cosine")
    lrs = [get_lr(s, t, 110) for s in range(120)]
    assert lrs[9] == lrs[10] == 1e-3  # the warm-up ends at the full lr, where the cosine starts
    assert math.isclose(lrs[60], 0.5e-3)  # half-way through the cosine
    assert lrs[110] == 0.0 and lrs[119] == 0.0 and lrs[109] > 0
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # never rises again
    with pytest.raises(ValueError, match="planned step count"):
        get_lr(10, t, None)  # a time-planned run must have planned by the end of its warm-up
    assert get_lr(3, t, None) == 4e-4  # ... but not before


def test_plan_from_the_time_budget():
    times = [9.0] * 4 + [1.0] * 12  # the first quarter (start-up) is left out
    assert plan_steps(16, 40.0, 100.0, times) == 16 + 60
    assert plan_steps(16, 120.0, 100.0, times) == 16  # the budget is already used
    with pytest.raises(ConfigError, match="max_minutes"):
        load_config(TINY, ["train.max_steps=0"])
    with pytest.raises(ConfigError, match=f"at least {MIN_PLANNING_STEPS}"):
        load_config(TINY, ["train.max_steps=0", "train.max_minutes=1", "train.warmup_steps=5"])
    with pytest.raises(ConfigError, match="max_steps"):
        load_config(TINY, ["train.max_steps=-1"])


def test_resumed_plan_keeps_the_schedule_unless_max_steps_changes():
    saved = train_cfg("train.max_steps=0", "train.max_minutes=10", "train.warmup_steps=20", "train.lr_schedule=cosine")
    state = {"step": 300, "train_seconds": 200.0, "planned_steps": 900}
    more_time = train_cfg("train.max_steps=0", "train.max_minutes=60", "train.warmup_steps=20", "train.lr_schedule=cosine")
    assert resumed_plan(more_time, saved, state) == 900  # a larger budget does not bend the schedule
    re_planned = train_cfg("train.max_steps=2000", "train.warmup_steps=20", "train.lr_schedule=cosine")
    assert resumed_plan(re_planned, saved, state) == 2000  # an explicit step count re-plans from here on
    assert resumed_plan(more_time, saved, dict(state, planned_steps=None)) is None  # saved during the warm-up


def test_checkpoint_from_before_plans_continues_its_cosine_without_a_jump():
    """Older checkpoints ran the cosine over max(step / max_steps, seconds / budget): they continue at the
    same point of the cosine."""
    old = train_cfg("train.max_steps=1000000", "train.max_minutes=25", "train.warmup_steps=200",
                    "train.lr_schedule=cosine", "train.lr=2e-3")
    state = {"step": 3000, "train_seconds": 750.0, "scheduler": {"last_epoch": 3000}}  # half the budget
    planned = resumed_plan(old, old, state)
    old_lr = 2e-3 * 0.5 * (1 + math.cos(math.pi * 0.5))
    assert math.isclose(get_lr(3000, old, planned), old_lr, rel_tol=1e-3)
    steps_only = train_cfg("train.max_steps=8000", "train.warmup_steps=200", "train.lr_schedule=cosine")
    assert resumed_plan(steps_only, steps_only, {"step": 100, "train_seconds": 5.0}) == 8000


# ------------------------------------------------------------------ the EMA
def test_ema_update_is_the_ramped_average():
    lin = nn.Linear(3, 2)
    ema = EMA(lin, decay=0.9)
    start = [p.detach().clone() for p in lin.parameters()]
    with torch.no_grad():
        for p in lin.parameters():
            p.add_(1.0)
    ema.update(lin)  # first update: decay min(0.9, 1/10) = 0.1
    for e, s, p in zip(ema.model.parameters(), start, lin.parameters()):
        assert torch.allclose(e, 0.1 * s + 0.9 * p)
    for _ in range(200):
        ema.update(lin)
    assert torch.allclose(ema.model.weight, lin.weight, atol=1e-4)
    assert not ema.model.weight.requires_grad and ema.weights(lin) is ema.model
    raw = EMA(lin, decay=0.0)  # ema_decay 0: no copy, evaluation uses the trained weights
    raw.update(lin)
    assert raw.model is None and raw.weights(lin) is lin and raw.state_dict() is None and raw.updates == 1


# ------------------------------------------------------------------ the loop
def test_non_finite_steps_are_skipped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(FlowVAE, "loss", poisoned_loss({3, 5}))
    res = train(load_config(TINY, FAST), tmp_path / "run", device="cpu", progress=False)
    assert res["skipped_steps"] == 2 and res["step"] == 8
    model, _, state = load_checkpoint(tmp_path / "run", ema=False)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert state["skipped_steps"] == 2 and state["planned_steps"] == 8


def test_tc_term_trains_its_discriminator_on_the_global_code_of_applied_steps(tmp_path, monkeypatch):
    """The Factor-VAE penalty is one extra loss term: on a hierarchical model (the flat code holds the global
    code and each level's) its discriminator reads the global code, steps once per applied model step (not on
    a skipped one), and is checkpointed under 'tc'."""
    monkeypatch.setattr(FlowVAE, "loss", poisoned_loss({2}))
    cfg = load_config(TINY, FAST + ["train.max_steps=4", "model.injection=hierarchical", "loss.tc_weight=10"])
    res = train(cfg, tmp_path / "run", device="cpu", progress=False)
    state = read_checkpoint(tmp_path / "run")
    assert res["skipped_steps"] == 1
    assert state["tc"]["disc"]["net.0.weight"].shape[1] == cfg.model.z_dim
    assert all(s["step"] == 3 for s in state["tc"]["opt"]["state"].values())


def test_wall_clock_budget_stops_training(tmp_path):
    cfg = load_config(TINY, FAST + ["train.max_steps=100000", "train.max_minutes=0.05"])
    res = train(cfg, tmp_path / "run", device="cpu", progress=False)
    assert 0 < res["step"] < 100000
    assert res["train_minutes"] >= 0.05
    assert json.loads((tmp_path / "run" / "train_metrics.json").read_text())["step"] == res["step"]


def slowed_loss(seconds: float):
    """FlowVAE.loss, slowed by ``seconds`` per training call: a slower (or busier) machine."""
    real = FlowVAE.loss

    def loss(self, x, kl_weight=None):
        if self.training:
            time.sleep(seconds)
        return real(self, x, kl_weight)

    return loss


def test_resume_is_bit_identical_however_fast_each_part_ran(tmp_path, monkeypatch):
    """A cosine run stopped early by its time budget on a slow machine, then resumed with a larger budget,
    ends with bitwise the weights of the same run that never stopped: the lr never read the clock."""
    common = FAST + ["train.max_steps=12", "train.warmup_steps=2", "train.lr_schedule=cosine", "train.lr=5e-3"]
    whole = train(load_config(TINY, common), tmp_path / "whole", device="cpu", progress=False)
    with monkeypatch.context() as m:
        m.setattr(FlowVAE, "loss", slowed_loss(0.3))  # 12 steps take > 3.6 s: the 1.5 s budget stops it
        part = train(load_config(TINY, common + ["train.max_minutes=0.025"]), tmp_path / "parts", device="cpu",
                     progress=False)
    assert 1 <= part["step"] < 12
    res = train(load_config(TINY, common + ["train.max_minutes=0"]), tmp_path / "parts", device="cpu", resume=True,
                progress=False)
    assert whole["step"] == res["step"] == 12
    a, b = read_checkpoint(tmp_path / "whole"), read_checkpoint(tmp_path / "parts")
    assert a["planned_steps"] == b["planned_steps"] == 12
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    for i, s in a["optimizer"]["state"].items():
        assert all(torch.equal(s[k], b["optimizer"]["state"][i][k]) for k in s)
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"] > 0
    assert whole["elbo_bpd"] == res["elbo_bpd"]


@pytest.mark.slow
def test_time_planned_run_plans_once_and_resume_keeps_the_plan(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--config", str(TINY), "--out", str(out), *QUIET, "train.checkpoint_every=0", "train.max_steps=0",
            "train.max_minutes=0.25", f"train.warmup_steps={MIN_PLANNING_STEPS}", "train.lr_schedule=cosine"]
    assert main(["train", *args]) == 0
    said = capsys.readouterr().out
    planned = int(re.search(r"planned (\d+) steps", said)[1])
    state = read_checkpoint(out)
    assert state["planned_steps"] == planned > MIN_PLANNING_STEPS
    # a larger time budget on resume runs the same plan to its end, and plans nothing new
    assert main(["train", "--out", str(out), "--resume", *QUIET, "train.max_minutes=5"]) == 0
    assert not re.search(r"planned \d+ steps", capsys.readouterr().out)
    state = read_checkpoint(out)
    assert state["step"] == state["planned_steps"] == planned
    assert state["optimizer"]["param_groups"][0]["lr"] == get_lr(planned - 1, load_config(None, [
        "train.max_steps=0", "train.max_minutes=1", f"train.warmup_steps={MIN_PLANNING_STEPS}",
        "train.lr_schedule=cosine", "train.lr=2e-3"]).train, planned)


def test_checkpoint_from_before_plans_resumes(tmp_path, capsys):
    """A checkpoint written before planned step counts (a LambdaLR 'scheduler' state, 'initial_lr' in the
    optimiser's groups, no 'planned_steps') resumes and says how its schedule continues."""
    out = tmp_path / "run"
    assert main(["train", "--config", str(TINY), "--out", str(out), *QUIET, "train.checkpoint_every=0",
                 "train.max_steps=6", "train.lr_schedule=cosine", "train.max_minutes=60"]) == 0
    state = read_checkpoint(out)
    del state["planned_steps"]
    state["scheduler"] = {"base_lrs": [2e-3], "last_epoch": 6, "_step_count": 7, "lr_lambdas": [None]}
    for g in state["optimizer"]["param_groups"]:
        g["initial_lr"] = 2e-3
    save_checkpoint(out / "checkpoint.pt", state)
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", *QUIET]) == 0
    said = capsys.readouterr().out
    assert "a checkpoint from before planned step counts" in said
    state = read_checkpoint(out)
    assert state["planned_steps"] is not None and state["step"] == state["planned_steps"] >= 6
    assert "initial_lr" not in state["optimizer"]["param_groups"][0]


def test_resume_applies_new_lr_and_refuses_changed_data_order(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "--config", str(TINY), "--out", out, "--no-progress", *FAST]) == 0
    assert main(["train", "--out", out, "--resume", "--no-progress", "train.batch_size=16", "train.max_steps=10"]) == 2
    assert main(["train", "--out", out, "--resume", "--no-progress", "train.lr=1e-4", "train.max_steps=10"]) == 0
    _, _, state = load_checkpoint(out)
    assert state["step"] == 10 and state["planned_steps"] == 10
    assert all(g["lr"] == 1e-4 for g in state["optimizer"]["param_groups"])  # the last warm-up step: the full lr
    # the training loss's weights may change on resume; the architecture may not
    assert main(["train", "--out", out, "--resume", "--no-progress", "model.kl_beta=0.5", "train.max_steps=12"]) == 0
    _, cfg, state = load_checkpoint(out)
    assert state["step"] == 12 and cfg.loss.kl_beta == 0.5
    assert main(["train", "--out", out, "--resume", "--no-progress", "model.hidden=4", "train.max_steps=14"]) == 2


def test_one_host_sync_per_step_and_one_per_log_step(tmp_path, monkeypatch):
    """Inside the loop, the engine reads a value from the device once per step (the combined finiteness
    check and stop flags) and once more per log step; nothing else (no per-micro-batch .item())."""
    import sys

    from flowvae.engine import loop as loop_mod

    engine = str(Path(loop_mod.__file__).parent)
    state = {"in_loop": False, "reads": 0}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, **k):
            if state["in_loop"] and sys._getframe(1).f_code.co_filename.startswith(engine):
                state["reads"] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    real_loop = loop_mod.run_loop

    def in_loop(*a, **k):
        state["in_loop"] = True
        try:
            return real_loop(*a, **k)
        finally:
            state["in_loop"] = False

    monkeypatch.setattr("flowvae.engine.train.run_loop", in_loop)
    steps, log_every = 9, 4
    train(load_config(TINY, FAST + [f"train.max_steps={steps}", f"train.log_every={log_every}", "train.grad_accum=2"]),
          tmp_path / "run", device="cpu", progress=False)
    log_steps = 1 + steps // log_every  # step 1, then every log_every
    assert state["reads"] == steps + log_steps


# ------------------------------------------------------------------ a full disk
def test_full_disk_at_start_names_out_and_leaves_no_config(tmp_path, monkeypatch, capsys):
    out = tmp_path / "disk" / "run"
    real = Path.write_text

    def full(self, data, *a, **k):
        if out in self.parents:
            real(self, "")  # the file is created, nothing fits in it
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, data, *a, **k)

    monkeypatch.setattr(Path, "write_text", full)
    monkeypatch.chdir(tmp_path)
    err = error_of(capsys, "train", "--config", str(TINY), "--out", str(out), *QUIET)
    assert "disk is full" in err and f"disk holding {out})" in err and "--out" in err
    assert not (out / "config.yaml").exists() and [p.name for p in out.iterdir()] == []


def test_failed_final_save_keeps_a_rescue_checkpoint_that_resumes(tmp_path, monkeypatch, capsys):
    """checkpoint_every=0 and the final save fails (a full disk under --out): the state goes to the temporary
    directory, and following the error's advice continues the run."""
    out, elsewhere = tmp_path / "run", tmp_path / "tmp"
    elsewhere.mkdir()
    real = torch.save

    def full_under_out(obj, f, *a, **k):
        if Path(f).parent == out:
            Path(f).write_bytes(b"\0" * 4096)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)

    with monkeypatch.context() as m:
        m.setattr("flowvae.checkpoint.torch.save", full_under_out)
        m.setattr(tempfile, "tempdir", str(elsewhere))
        err = error_of(capsys, "train", "--config", str(TINY), "--out", str(out), *QUIET, "train.checkpoint_every=0",
                       "train.max_steps=6")
    assert "disk is full" in err and err.count("\n") == 1
    rescue = Path(re.search(r"saved to (\S+checkpoint\.pt) instead", err)[1])
    assert rescue.is_file() and elsewhere in rescue.parents and not (out / "checkpoint.pt").exists()
    shutil.move(rescue, out / "checkpoint.pt")  # what the message says to do
    assert main(["train", "--out", str(out), "--resume", *QUIET, "train.max_steps=8"]) == 0
    assert read_checkpoint(out)["step"] == 8


def test_failed_save_with_nowhere_to_write_says_the_steps_are_lost(tmp_path, monkeypatch, capsys):
    def full(obj, f, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("flowvae.checkpoint.torch.save", full)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    out = tmp_path / "run"
    err = error_of(capsys, "train", "--config", str(TINY), "--out", str(out), *QUIET, "train.checkpoint_every=0",
                   "train.max_steps=4")
    assert "continue with --resume" not in err and "--resume cannot continue it: its 4 steps are lost" in err
    assert not list(tmp_path.glob("flowvae-rescue-*"))  # nothing half-written left behind


# ------------------------------------------------------------------ configs
def test_bad_training_settings_are_rejected():
    for bad, msg in (("train.grad_clip=0", "grad_clip"), ("model.coupling_clamp=0", "coupling_clamp"),
                     ("train.log_every=0", "log_every"), ("eval.batch_size=0", "eval.batch_size"),
                     ("data.limit_train=-5", "limit_train"), ("train.max_steps=.inf", "max_steps"),
                     ("train.ema_decay=1.0", "ema_decay"), ("data.channels=2", "data.channels")):
        with pytest.raises(ConfigError, match=msg):
            load_config(TINY, [bad])


def test_every_shipped_config_loads_builds_and_plans_in_steps():
    """A shipped config and a seed are one model on any machine: each plans its run in steps, with no
    time budget that could stop it at a machine-dependent step."""
    configs = sorted(CONFIGS.glob("*.yaml"))
    assert {p.stem for p in configs} >= {"tiny", "quickstart", "fashion_mnist", "mnist", "cifar10", "celeba64"}
    for path in configs:
        cfg = load_config(path)
        assert cfg.train.max_steps > 0 and cfg.train.max_minutes == 0, path.name
        model = FlowVAE.from_config(cfg.model)
        assert model.image_shape == (cfg.model.image_channels, *cfg.model.image_size), path.name
    assert load_config(CONFIGS / "fashion_mnist.yaml").train.max_steps == 9172  # the shipped model's run
    big = FlowVAE.from_config(load_config(CONFIGS / "cifar10.yaml").model)
    assert len(big.glow.level_steps) == 3 and all(len(s) == 32 for s in big.glow.level_steps)
    assert big.glow.level_steps[0][0].layers[2].net.conv2.out_channels == 512
    with pytest.raises(FileNotFoundError):
        load_config(CONFIGS / "nope.yaml")
