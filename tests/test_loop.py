"""The training loop's pieces seen from the command line: resuming at an epoch's end, a checkpoint that
cannot be written, diverging runs that skip most steps, oversized settings clamped with a note, and the
first lines and progress of a run in a log file."""
import json
from pathlib import Path

import pytest

from flowvae import FlowVAE

from conftest import poisoned_loss

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
QUIET = ["--no-progress", "train.eval_every=0", "train.eval_images=32"]


def _cli_error(capsys, *argv) -> str:
    from flowvae.cli import main

    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
    return err


def test_resume_from_the_last_batch_of_an_epoch(tmp_path, capsys):
    from flowvae.checkpoint import read_checkpoint
    from flowvae.cli import main

    out = tmp_path / "run"  # 16 steps: the last batch of the first epoch (512 images / batch 32)
    assert main(["train", "--config", str(TINY), "--out", str(out), "train.max_steps=16", "train.checkpoint_every=0",
                 *QUIET]) == 0
    state = read_checkpoint(out)
    assert state["batch_in_epoch"] == 16 and state["epoch"] == 0  # saved on the epoch's last batch
    assert main(["train", "--out", str(out), "--resume", "train.max_steps=20", *QUIET]) == 0
    state = read_checkpoint(out)
    assert state["step"] == 20 and state["epoch"] == 1 and state["batch_in_epoch"] == 4
    # the same budget again: nothing to train, and the message says how to train on
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "train.max_steps=20", *QUIET]) == 0
    said = capsys.readouterr().out
    assert "already used its budget" in said and "--resume train.max_steps=40" in said
    assert read_checkpoint(out)["step"] == 20


@pytest.mark.parametrize("failure", ["enospc", "torch_pos"])
def test_disk_full_while_checkpointing(tmp_path, monkeypatch, capsys, failure):
    import errno
    import shutil

    def full_disk_save(obj, f, *a, **k):
        Path(f).write_bytes(b"\0" * 4096)  # what a full disk leaves: a partial temp file
        if failure == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4096 vs 4032")

    monkeypatch.setattr("flowvae.checkpoint.torch.save", full_disk_save)
    if failure == "torch_pos":  # torch hides the errno; the free space tells (from the first save on)
        usage = shutil.disk_usage(tmp_path)
        real_save = full_disk_save

        def save_on_a_full_disk(*a, **k):
            monkeypatch.setattr("flowvae.runtime.shutil.disk_usage", lambda p: usage._replace(free=1024))
            real_save(*a, **k)

        monkeypatch.setattr("flowvae.checkpoint.torch.save", save_on_a_full_disk)
    out = tmp_path / "run"
    err = _cli_error(capsys, "train", "--config", str(TINY), "--out", str(out), "train.max_steps=8",
                     "train.checkpoint_every=4", *QUIET)
    assert "cannot write checkpoint" in err and "disk is full" in err and "--resume" in err
    assert err.count("\n") == 1
    assert not list(out.glob("*.tmp")) and not (out / "checkpoint.pt").exists()


def test_training_that_skips_most_steps_stops(tmp_path, monkeypatch, capsys):
    from flowvae.checkpoint import read_checkpoint

    monkeypatch.setattr(FlowVAE, "loss", poisoned_loss(set(range(1, 1000))))
    err = _cli_error(capsys, "train", "--config", str(TINY), "--out", str(tmp_path / "r"), "train.max_steps=40", *QUIET)
    assert "max_skip_fraction" in err and "lower train.lr" in err
    state = read_checkpoint(tmp_path / "r")
    assert state["step"] == 10 and state["skipped_steps"] == 10


def test_a_run_stuck_skipping_every_step_stops_and_keeps_the_checkpoint_from_before(tmp_path, monkeypatch, capsys):
    """A healthy start hides a later streak from the share rule (24 good steps, then every step fails);
    the streak rule stops it, and the periodic checkpoint due during the streak is not written over
    the one from before it."""
    import torch

    from flowvae.checkpoint import read_checkpoint

    import flowvae.engine.loop as loop

    saved = []
    real_save = loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", lambda path, state: (saved.append(state["step"]), real_save(path, state))[1])
    monkeypatch.setattr(FlowVAE, "loss", poisoned_loss(set(range(25, 1000))))
    err = _cli_error(capsys, "train", "--config", str(TINY), "--out", str(tmp_path / "r"), "train.max_steps=200",
                     "train.checkpoint_every=10", "train.max_skip_fraction=1", "train.max_skipped_in_a_row=12", *QUIET)
    assert "stopping at step 36: the last 12 steps in a row (from step 25)" in err and "lower train.lr" in err
    assert saved == [10, 20]  # step 30 was skipped: no save then, and none when it stopped
    state = read_checkpoint(tmp_path / "r")
    assert state["step"] == 20 and state["skipped_steps"] == 0
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_a_checkpoint_due_on_a_skipped_step_is_written_at_the_next_applied_one(tmp_path, monkeypatch):
    from flowvae.cli import main

    import flowvae.engine.loop as loop

    saved = []
    real_save = loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", lambda path, state: (saved.append(state["step"]), real_save(path, state))[1])
    monkeypatch.setattr(FlowVAE, "loss", poisoned_loss({10}))
    assert main(["train", "--config", str(TINY), "--out", str(tmp_path / "r"), "train.max_steps=15",
                 "train.checkpoint_every=5", *QUIET]) == 0
    assert saved == [5, 11, 15]


def test_a_few_skipped_steps_warn(tmp_path, monkeypatch, capsys):
    from flowvae.cli import main

    monkeypatch.setattr(FlowVAE, "loss", poisoned_loss({3, 4, 5}))
    assert main(["train", "--config", str(TINY), "--out", str(tmp_path / "r"), "train.max_steps=12", *QUIET]) == 0
    assert "warning: 3 of this run's 12 steps (25%) were skipped" in capsys.readouterr().out
    # a configurable share: 3 of the first 10 steps is more than 0.2
    monkeypatch.setattr(FlowVAE, "loss", poisoned_loss({3, 4, 5}))
    _cli_error(capsys, "train", "--config", str(TINY), "--out", str(tmp_path / "r2"), "train.max_steps=12",
               "train.max_skip_fraction=0.2", *QUIET)


def test_oversized_init_batch_and_eval_images_are_clamped_with_a_note(tmp_path, capsys):
    from flowvae.cli import main

    assert main(["train", "--config", str(TINY), "--out", str(tmp_path / "r"), "train.max_steps=2",
                 "train.init_batch_size=100000", "train.eval_images=100000", "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "train.init_batch_size=100000 is larger than the training set; the data-dependent init uses all 512" in said
    assert "train.eval_images=100000 is larger than the test set; evaluating on all 128" in said
    assert json.loads((tmp_path / "r" / "train_metrics.json").read_text())["images"] == 128


def test_first_lines_and_progress_in_a_log(tmp_path, monkeypatch, capsys):
    from flowvae.cli import main

    monkeypatch.setenv("FLOWVAE_PROGRESS_SECONDS", "0")  # a plain line per step
    out = tmp_path / "r"
    assert main(["train", "--config", str(TINY), "--out", str(out), "train.max_steps=6", "train.eval_every=0",
                 "train.eval_images=32"]) == 0
    cap = capsys.readouterr()
    for text in ("512 train / 128 test images", "parameters", "cpu, 1 CPU thread (auto)", "precision   fp32",
                 f"tensorboard --logdir {out / 'tb'}", f"checkpoint  {out / 'checkpoint.pt'}"):
        assert text in cap.out, text
    assert "\r" not in cap.err  # no carriage-return bar in a log
    lines = [ln for ln in cap.err.splitlines() if ln.startswith("train: ")]
    assert len(lines) >= 6
    assert "train: 1/6 steps" in lines[0] and "bpd " in lines[0] and "img/s" in lines[0] and "ETA" in lines[0]
    assert "bpd nan" not in cap.err
