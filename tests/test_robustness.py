"""What a new user runs into: resuming at an epoch's end, output problems, nonsensical values, clear
messages, image folders, progress reports in logs and the first lines of a run. No traceback reaches
the command line: every failure here is one 'error: ...' line and exit code 2."""
import errno
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowvae import FlowVAE, load_checkpoint, load_config
from flowvae.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from flowvae.cli import main, parse_args
from flowvae.config import ConfigError
from flowvae.data import DataError, iterate_batches, load_dataset
from flowvae.engine.evaluate import round_images
from flowvae.runtime import Progress, apply_threads

from conftest import poisoned_loss

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
QUIET = ["--no-progress", "train.eval_every=0", "train.eval_images=32"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny run of 16 steps: the last batch of its first epoch (512 images / batch 32)."""
    out = tmp_path_factory.mktemp("robust") / "run"
    assert main(["train", "--config", TINY, "--out", str(out), "train.max_steps=16", "train.checkpoint_every=0", *QUIET]) == 0
    return out


def error_of(capsys, *argv) -> str:
    """Run the CLI, require exit code 2 and return its one-paragraph stderr."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err
    return err


# ------------------------------------------------------------------ 1. resume at the end of an epoch
def test_resume_from_the_last_batch_of_an_epoch(run, tmp_path, capsys):
    state = read_checkpoint(run)
    assert state["batch_in_epoch"] == 16 and state["epoch"] == 0  # saved on the epoch's last batch
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes())
    assert main(["train", "--out", str(out), "--resume", "train.max_steps=20", *QUIET]) == 0
    state = read_checkpoint(out)
    assert state["step"] == 20 and state["epoch"] == 1 and state["batch_in_epoch"] == 4
    # the same budget again: nothing to train, and the message says how to train on
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "train.max_steps=20", *QUIET]) == 0
    said = capsys.readouterr().out
    assert "already used its budget" in said and "--resume train.max_steps=40" in said
    assert read_checkpoint(out)["step"] == 20


def test_no_empty_batch_from_an_exhausted_index_list():
    ds = torch.utils.data.TensorDataset(torch.zeros(4, 1, 8, 8, dtype=torch.uint8))
    assert list(iterate_batches(ds, 2, indices=torch.zeros(0, dtype=torch.long))) == []


# ------------------------------------------------------------------ 2. output problems
def test_out_under_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    err = error_of(capsys, "train", "--config", TINY, "--out", str(tmp_path / "afile" / "run"), *QUIET)
    assert "--out" in err and "is a file, not a directory" in err


def test_out_that_cannot_be_created_names_the_option(tmp_path, capsys):
    err = error_of(capsys, "train", "--config", TINY, "--out", "/proc/flowvae_run", *QUIET)
    assert "--out /proc/flowvae_run" in err and "choose a writable --out" in err


def test_unwritable_out_is_found_before_the_work(run, monkeypatch, capsys):
    import flowvae.engine.analyze as analyze_mod
    import flowvae.engine.evaluate as evaluate_mod

    def never(*a, **k):
        raise AssertionError("the work ran before the output was checked")

    monkeypatch.setattr(evaluate_mod, "evaluate", never)
    monkeypatch.setattr(analyze_mod, "analyze", never)
    for cmd in ("evaluate", "analyze"):
        err = error_of(capsys, cmd, "--checkpoint", str(run), "--out", "/proc/flowvae/res.json")
        assert "--out /proc/flowvae/res.json" in err
    err = error_of(capsys, "sample", "--checkpoint", str(run), "--out", str(run / "checkpoint.pt" / "s.png"))
    assert "--out" in err


@pytest.mark.parametrize("failure", ["enospc", "torch_pos"])
def test_disk_full_while_checkpointing(tmp_path, monkeypatch, capsys, failure):
    import shutil

    def full_disk_save(obj, f, *a, **k):
        Path(f).write_bytes(b"\0" * 4096)  # what a full disk leaves: a partial temp file
        if failure == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4096 vs 4032")

    monkeypatch.setattr("flowvae.checkpoint.torch.save", full_disk_save)
    if failure == "torch_pos":  # torch hides the errno; the free space tells
        usage = shutil.disk_usage(tmp_path)
        monkeypatch.setattr("flowvae.runtime.shutil.disk_usage", lambda p: usage._replace(free=1024))
    out = tmp_path / "run"
    err = error_of(capsys, "train", "--config", TINY, "--out", str(out), "train.max_steps=8",
                   "train.checkpoint_every=4", *QUIET)
    assert "cannot write checkpoint" in err and "disk is full" in err and "--resume" in err
    assert err.count("\n") == 1
    assert not list(out.glob("*.tmp")) and not (out / "checkpoint.pt").exists()


def test_devices_that_do_not_exist(run, capsys):
    err = error_of(capsys, "sample", "--checkpoint", str(run), "--device", "cuda:99", "--out", str(run / "s.png"))
    assert "cuda:99" in err and "CUDA device" in err
    if not torch.cuda.is_available():
        err = error_of(capsys, "sample", "--checkpoint", str(run), "--device", "cuda:1", "--out", str(run / "s.png"))
        assert "torch sees no CUDA device" in err and "--device cpu" in err
    with pytest.raises(ValueError, match="device must be auto, cpu, cuda or cuda:N"):
        load_checkpoint(run, device="tpu")


# ------------------------------------------------------------------ 3. non-finite and nonsensical values
@pytest.mark.parametrize("override", ["train.lr=inf", "model.coupling_clamp=inf", "train.lr=nan", "loss.kl_beta=inf"])
def test_non_finite_settings_are_rejected(override, tmp_path, capsys):
    with pytest.raises(ConfigError, match="must be a finite number"):
        load_config(TINY, [override])
    err = error_of(capsys, "train", "--config", TINY, "--out", str(tmp_path / "r"), override)
    assert override.split("=")[0] in err


@pytest.mark.parametrize("option,value", [("--temperature", "nan"), ("--temperature", "-1"),
                                          ("--z-temperature", "inf")])
def test_bad_temperatures_are_rejected(run, option, value, capsys):
    with pytest.raises(SystemExit) as e:
        main(["sample", "--checkpoint", str(run), option, value])
    assert e.value.code == 2
    assert "must be a finite number >= 0" in capsys.readouterr().err


def test_decode_rejects_non_finite_codes_and_images(make_model, images):
    model = make_model()
    z, eps = model.encode(images(3))
    for bad_z, bad_eps in ((z, eps.clone().index_fill_(0, torch.tensor([1]), float("nan"))),
                           (z.clone().fill_(float("inf")), eps)):
        with pytest.raises(ValueError, match="NaN or inf"):
            model.decode(bad_z, bad_eps)
    with pytest.raises(TypeError, match="decode takes codes"):
        model.decode(z, images(3))
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        model.sample(2, temperature=float("nan"))
    with pytest.raises(ValueError, match="z_temperature must be a finite number >= 0"):
        model.sample(2, z_temperature=-1.0)


def test_an_uninitialised_model_is_refused(images):
    model = FlowVAE.from_config(load_config(None, ["model.image_size=8", "model.levels=2", "model.steps=1",
                                                   "model.hidden=8", "model.z_dim=4"]).model)
    for call in (lambda: model.loss(images(2)), lambda: model.encode(images(2)), lambda: model.log_prob(images(2))):
        with pytest.raises(RuntimeError, match=r"never initialised: call model.initialize\(x\)"):
            call()
    model.initialize(images(16))
    assert torch.isfinite(model.loss(images(2))["loss"])


def test_training_that_skips_most_steps_stops(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(FlowVAE, "loss", poisoned_loss(set(range(1, 1000))))
    err = error_of(capsys, "train", "--config", TINY, "--out", str(tmp_path / "r"), "train.max_steps=40", *QUIET)
    assert "max_skip_fraction" in err and "lower train.lr" in err
    state = read_checkpoint(tmp_path / "r")
    assert state["step"] == 10 and state["skipped_steps"] == 10


def test_a_few_skipped_steps_warn(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(FlowVAE, "loss", poisoned_loss({3, 4, 5}))
    assert main(["train", "--config", TINY, "--out", str(tmp_path / "r"), "train.max_steps=12", *QUIET]) == 0
    assert "warning: 3 of this run's 12 steps (25%) were skipped" in capsys.readouterr().out
    # a configurable share: 3 of the first 10 steps is more than 0.2
    monkeypatch.setattr(FlowVAE, "loss", poisoned_loss({3, 4, 5}))
    error_of(capsys, "train", "--config", TINY, "--out", str(tmp_path / "r2"), "train.max_steps=12",
             "train.max_skip_fraction=0.2", *QUIET)


# ------------------------------------------------------------------ 4. messages
def test_overrides_may_follow_options():
    args = parse_args(["train", "--out", "R", "train.lr=1e-3", "--no-progress", "train.seed=3", "--resume"])
    assert args.command == "train" and args.overrides == ["train.lr=1e-3", "train.seed=3"]
    assert args.no_progress and args.resume and args.out == "R"


def test_unknown_keys_get_a_valid_hint():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.learning_rate=1e-3"])
    assert str(e.value) == "unknown config key train.learning_rate (did you mean 'lr'?)"
    with pytest.raises(ConfigError, match=r"did you mean model\.z_dim\?"):
        load_config(None, ["train.z_dim=3"])
    with pytest.raises(ConfigError) as e:
        load_config(None, ["lr=1e-3"])
    hint = str(e.value).rsplit("e.g. ", 1)[1]
    assert hint == "train.lr=1e-3"
    assert load_config(None, [hint]).train.lr == 1e-3  # the hint itself is valid


def test_checkpoint_paths_that_are_directories(tmp_path, capsys):
    (tmp_path / "r" / "checkpoint.pt").mkdir(parents=True)
    err = error_of(capsys, "evaluate", "--checkpoint", str(tmp_path / "r"))
    assert "checkpoint.pt is a directory" in err and "checkpoint.pt/checkpoint.pt" not in err
    (tmp_path / "empty").mkdir()
    err = error_of(capsys, "evaluate", "--checkpoint", str(tmp_path / "empty"))
    assert "no checkpoint in" in err and "checkpoint.pt/" not in err


def test_checkpoint_with_an_unknown_config_key(run, tmp_path):
    state = read_checkpoint(run)
    state["config"]["model"]["no_such_key"] = 1
    save_checkpoint(tmp_path / "c.pt", state)
    with pytest.raises(CheckpointError, match="the config stored in this checkpoint"):
        load_checkpoint(tmp_path / "c.pt")


def test_checkpoint_of_another_architecture_is_one_short_line(run, tmp_path):
    state = read_checkpoint(run)
    state["config"]["model"]["hidden"] = 24  # the weights were made with hidden=16
    save_checkpoint(tmp_path / "c.pt", state)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "c.pt")
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 600 and "of another shape" in msg


def test_unsafe_pickles_never_advise_weights_only_false(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": Path("x")}, path)  # an object a safe load refuses
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    assert "weights_only=False" not in str(e.value) and "safe load" in str(e.value)
    err = error_of(capsys, "sample", "--checkpoint", str(path))
    assert "weights_only=False" not in err and "WeightsUnpickler" not in err


def test_api_arguments_are_checked(make_model, images, run):
    model = make_model()
    for n in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n must be >= 1 and an integer"):
            model.sample(n)
    with pytest.raises(ValueError, match="k must be >= 1 and an integer"):
        model.log_prob(images(2), k=2.5)
    x = images(2)
    with pytest.raises(TypeError, match="x_local must be a torch.Tensor"):
        model.swap([x], [x])
    with pytest.raises(TypeError, match="from_config takes a Config"):
        FlowVAE.from_config("hybrid")
    assert FlowVAE.from_config(load_config(TINY)).cfg.z_dim == 8  # a whole Config is fine too
    with pytest.raises(TypeError, match=r"use overrides=\['a.b=1'\]"):
        load_config(overrides="a.b=1")


# ------------------------------------------------------------------ 5. image folders
def _png(path: Path, size=(28, 28), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)).save(path)


def _folder_cfg(root, *extra):
    return load_config(None, ["data.dataset=folder", f"data.root={root}", "model.image_size=28", *extra])


def test_a_corrupt_image_is_found_up_front(tmp_path):
    for i in range(6):
        _png(tmp_path / "train" / f"{i}.png", seed=i)
    _png(tmp_path / "test" / "0.png")
    bad = tmp_path / "train" / "3.png"
    bad.write_bytes(bad.read_bytes()[:400])  # truncated: the header reads, the pixels do not
    cfg = _folder_cfg(tmp_path)
    with pytest.raises(DataError, match=r"cannot read image .*3\.png"):
        load_dataset(cfg.data, cfg.model, "train")  # at load time, before any batch is read


def test_mixed_image_sizes_need_data_image_size(tmp_path):
    for i in range(4):
        _png(tmp_path / f"a{i}.png", (28, 28))
        _png(tmp_path / f"b{i}.png", (32, 32))
    cfg = _folder_cfg(tmp_path)
    with pytest.raises(DataError, match=r"different sizes .*28x28.*32x32.*data.image_size"):
        load_dataset(cfg.data, cfg.model, "train")
    cfg = _folder_cfg(tmp_path, "data.image_size=28")
    assert load_dataset(cfg.data, cfg.model, "train")[torch.arange(2)][0].shape == (2, 1, 28, 28)


def test_oversized_init_batch_and_eval_images_are_clamped_with_a_note(tmp_path, capsys):
    assert main(["train", "--config", TINY, "--out", str(tmp_path / "r"), "train.max_steps=2",
                 "train.init_batch_size=100000", "train.eval_images=100000", "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "train.init_batch_size=100000 is larger than the training set; the data-dependent init uses all 512" in said
    assert "train.eval_images=100000 is larger than the test set; evaluating on all 128" in said
    assert json.loads((tmp_path / "r" / "train_metrics.json").read_text())["images"] == 128


# ------------------------------------------------------------------ progress, first lines, threads
def test_first_lines_and_progress_in_a_log(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FLOWVAE_PROGRESS_SECONDS", "0")  # a plain line per step
    out = tmp_path / "r"
    assert main(["train", "--config", TINY, "--out", str(out), "train.max_steps=6", "train.eval_every=0",
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


def test_classifier_bar_does_not_flood_a_log(capsys):
    from flowvae.data.datasets import TensorImages
    from flowvae.engine.analyze import train_classifier

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (256, 1, 8, 8), dtype=torch.uint8, generator=g)
    ds = TensorImages(x, torch.arange(256) % 2, "toy")
    train_classifier(ds, ds, epochs=2, batch_size=16, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err and 1 <= len(err.splitlines()) <= 2 and "classifier: 32/32 steps" in err


def test_plain_progress_lines_follow_the_interval(capsys):
    bar = Progress(total=5, desc="job", unit="img", interval=3600)
    for _ in range(5):
        bar.update(1)
    bar.close()
    assert capsys.readouterr().err.splitlines() == [ln for ln in ["job: 5/5 img [0:00]"]]


def test_sharded_evaluation_counts_each_image_once():
    batches = list(torch.split(torch.arange(64), 64))
    assert sum(round_images(batches, b, 2) for b in range(0, len(batches), 2)) == 64  # was 128
    batches = list(torch.split(torch.arange(138), 64))  # 64, 64, 10 over two ranks: rank 0 has 0 and 2
    assert [round_images(batches, b, 2) for b in (0, 2)] == [128, 10]


def test_default_threads_are_one_and_restored(tmp_path):
    from flowvae.config import TrainConfig

    assert TrainConfig().threads == 0  # auto
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert apply_threads(0) == 1 and apply_threads(3) == 3
        torch.set_num_threads(2)
        assert apply_threads(-1) == 2  # -1: leave torch's setting alone
    finally:
        torch.set_num_threads(before)
