"""Every CLI command end to end on configs/tiny.yaml, resume, interruption and bad inputs."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowvae import load_checkpoint
from flowvae.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", "--config", TINY, "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    return out


def test_train_writes_run(tiny_run):
    for name in ("checkpoint.pt", "config.yaml", "train_metrics.json"):
        assert (tiny_run / name).is_file()
    assert any((tiny_run / "tb").iterdir())
    metrics = json.loads((tiny_run / "train_metrics.json").read_text())
    assert metrics["step"] == 20 and metrics["skipped_steps"] == 0
    model, cfg, state = load_checkpoint(tiny_run / "checkpoint.pt")
    assert state["step"] == 20 and cfg.model.z_dim == 8
    assert not any(k.startswith("module.") for k in state["model"])


def test_evaluate(tiny_run, capsys):
    out = tiny_run / "ev.json"
    assert main(["evaluate", "--checkpoint", str(tiny_run), "--k", "4", "--limit", "32", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["images"] == 32
    for key in ("elbo_bpd", "iw4_bpd", "flow_bpd", "kl_bpd", "dequant_bpd", "kl_nats", "active_units"):
        assert key in res
    assert abs(res["flow_bpd"] + res["kl_bpd"] + res["dequant_bpd"] - res["elbo_bpd"]) < 1e-4
    assert "iw4_bpd" in capsys.readouterr().out
    # per-image spread: the worst image is at least the median and the mean, and is named
    assert res["elbo_bpd_max"] >= res["elbo_bpd_median"] and res["elbo_bpd_max"] >= res["elbo_bpd"]
    assert 0 <= res["elbo_bpd_max_index"] < 32


@pytest.mark.parametrize("cmd,extra", [
    ("sample", ["--n", "9", "--temperature", "0.5"]),
    ("swap", ["--n", "4"]),
    ("reconstruct", ["--n", "3"]),
    ("interpolate", ["--pairs", "2", "--steps", "5"]),
])
def test_image_commands(tiny_run, tmp_path, cmd, extra):
    out, plain = tmp_path / f"{cmd}.png", tmp_path / f"{cmd}_plain.png"
    assert main([cmd, "--checkpoint", str(tiny_run / "checkpoint.pt"), "--out", str(out), *extra]) == 0
    assert main([cmd, "--checkpoint", str(tiny_run / "checkpoint.pt"), "--out", str(plain), "--no-labels", *extra]) == 0
    # grid tiles are 28 px shown at 2x (56 px) + 2 px padding
    rows_cols = {"sample": (3, 3), "swap": (5, 5), "reconstruct": (3, 9), "interpolate": (6, 5)}[cmd]
    with Image.open(plain) as im:
        grid = np.asarray(im.convert("L"))
    assert grid.shape == (2 + 58 * rows_cols[0], 2 + 58 * rows_cols[1])
    # labelled: the same grid under a caption band with dark text that says which row / column is which
    with Image.open(out) as im:
        labelled = np.asarray(im.convert("L"))
    band = labelled.shape[0] - grid.shape[0]
    assert labelled.shape[1] == grid.shape[1] and band >= 12
    assert (labelled[band:] == grid).all()
    assert (labelled[:band] < 100).sum() > 30


def test_resume_equals_uninterrupted(tmp_path):
    common = ["--config", TINY, "--no-progress", "train.threads=1", "train.eval_every=0", "train.checkpoint_every=0"]
    assert main(["train", "--out", str(tmp_path / "a"), *common, "train.max_steps=16"]) == 0
    assert main(["train", "--out", str(tmp_path / "b"), *common, "train.max_steps=9"]) == 0
    # the same run directory refuses to start over without --resume
    assert main(["train", "--out", str(tmp_path / "b"), *common, "train.max_steps=16"]) == 2
    assert main(["train", "--out", str(tmp_path / "b"), "--resume", *common, "train.max_steps=16"]) == 0
    _, _, sa = load_checkpoint(tmp_path / "a")
    _, _, sb = load_checkpoint(tmp_path / "b")
    assert sa["step"] == sb["step"] == 16
    for key in sa["model"]:
        assert torch.allclose(sa["model"][key].float(), sb["model"][key].float(), atol=1e-5), key
    for key in sa["ema"]:
        assert torch.allclose(sa["ema"][key].float(), sb["ema"][key].float(), atol=1e-5), key


@pytest.mark.slow
def test_sigint_saves_checkpoint_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "flowvae.cli", "train", "--config", TINY, "--out", str(out), "--no-progress",
            "train.max_steps=100000", "train.checkpoint_every=5", "train.eval_every=0"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    log, _ = p.communicate(timeout=120)
    assert p.returncode == 0, log
    assert "interrupted at step" in log
    _, _, state = load_checkpoint(out)
    stopped = state["step"]
    assert stopped >= 5
    assert main(["train", "--out", str(out), "--resume", "--no-progress", f"train.max_steps={stopped + 5}"]) == 0
    _, _, state = load_checkpoint(out)
    assert state["step"] == stopped + 5


def test_cli_errors(tmp_path, tiny_run, capsys):
    assert main(["train", "--config", TINY, "--out", str(tmp_path / "x"), "model.z_dimm=3"]) == 2
    assert "did you mean 'z_dim'" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "x")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    assert main(["sample", "--checkpoint", str(bad)]) == 2
    assert "not a readable flowvae checkpoint" in capsys.readouterr().err
    # truncated real checkpoint
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes((tiny_run / "checkpoint.pt").read_bytes()[:5000])
    assert main(["evaluate", "--checkpoint", str(trunc)]) == 2
    assert "truncated" in capsys.readouterr().err
    # the data does not match the model
    assert main(["train", "--config", TINY, "--out", str(tmp_path / "y"), "model.image_size=32", "model.levels=2"]) == 2
    assert "gives 1x28x28 images" in capsys.readouterr().err
    assert main(["train", "--config", TINY, "--out", str(tmp_path / "z"), "data.dataset=mnist",
                 "data.root=" + str(tmp_path)]) == 2
    assert "not found in" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["swap", "--checkpoint", str(tiny_run), "model.z_dim=3"])


def test_cli_rejects_bad_counts(tiny_run, capsys):
    for args in (["sample", "--n", "0"], ["evaluate", "--k", "0"], ["swap", "--first", "-1"],
                 ["interpolate", "--steps", "1"], ["evaluate", "--limit", "-1"]):
        with pytest.raises(SystemExit) as e:
            main([args[0], "--checkpoint", str(tiny_run), *args[1:]])
        assert e.value.code == 2
        assert "must be >=" in capsys.readouterr().err
