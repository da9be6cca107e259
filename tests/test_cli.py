"""The ``flowvae`` command (flowvae/cli.py): every command end to end on configs/tiny.yaml, the registry and
its parser, outputs checked before the work, the rule for --images of another size, and the errors: a
user error is one 'error:' line with exit code 2 (--debug adds the traceback), a bug keeps its traceback."""
import errno
import inspect
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import flowvae.cli as cli
from flowvae import load_checkpoint
from flowvae.cli import COMMANDS, Command, build_parser, main, parse_args, register

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
QUIET = ["--no-progress", "train.eval_every=0", "train.eval_images=32"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", "--config", TINY, "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    return out


@pytest.fixture(scope="module")
def glow_run(tmp_path_factory):
    """A flow-only model (no global code), two steps."""
    out = tmp_path_factory.mktemp("runs") / "glow"
    assert main(["train", "--config", TINY, "--out", str(out), "model.type=glow", "train.max_steps=2", *QUIET]) == 0
    return out


def error_of(capsys, *argv) -> str:
    """Run the CLI, require exit code 2 and one 'error:' line without a traceback; return it."""
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "Traceback" not in err and err.count("\n") == 1, err
    return err


@pytest.fixture
def no_work(monkeypatch):
    """Every command's work fails the test if it starts: the checks must refuse first."""
    import flowvae.engine.analyze as analyze
    import flowvae.engine.evaluate as evaluate
    import flowvae.engine.generate as generate
    import flowvae.uses.restore as restore
    import flowvae.uses.score as score

    def never(*a, **k):
        raise AssertionError("the work ran before the checks")

    for module, names in ((generate, ["sample_images", "swap_grid", "reconstruct_grid", "interpolate_grid",
                                      "resample_level_grid"]), (restore, ["inpaint", "denoise"]),
                          (score, ["score_dataset"]), (evaluate, ["evaluate"]), (analyze, ["analyze"])):
        for name in names:
            monkeypatch.setattr(module, name, never)


def _pngs(folder: Path, sizes, seed=0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i, size in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(folder / f"im{i}_{size[0]}.png")
    return folder


# ------------------------------------------------------------------ every command end to end
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
    torch.set_num_threads(1)
    argv = ["evaluate", "--checkpoint", str(tiny_run), "--k", "4", "--limit", "32", "--out", str(out), "train.threads=2"]
    try:
        assert main(argv) == 0
        assert torch.get_num_threads() == 2  # scored on the threads asked for, not the checkpoint's 1
    finally:
        torch.set_num_threads(1)
    res = json.loads(out.read_text())
    assert res["images"] == 32
    for key in ("elbo_bpd", "iw4_bpd", "flow_bpd", "kl_bpd", "dequant_bpd", "kl_nats", "active_units"):
        assert key in res
    assert abs(res["flow_bpd"] + res["kl_bpd"] + res["dequant_bpd"] - res["elbo_bpd"]) < 1e-4
    assert "iw4_bpd" in capsys.readouterr().out
    # per-image spread: the worst image is at least the median and the mean, and is named
    assert res["elbo_bpd_max"] >= res["elbo_bpd_median"] and res["elbo_bpd_max"] >= res["elbo_bpd"]
    assert 0 <= res["elbo_bpd_max_index"] < 32
    # and under the importance-weighted bound: recomputed image by image with evaluate's per-batch seeds
    from flowvae.data import load_dataset
    from flowvae.engine.evaluate import batch_seed

    model, cfg, _ = load_checkpoint(tiny_run)
    ds, per_image = load_dataset(cfg.data, cfg.model, "test"), []
    with torch.no_grad():
        for b, lo in enumerate(range(0, 32, cfg.eval.batch_size)):
            x = ds[torch.arange(lo, min(lo + cfg.eval.batch_size, 32))][0]
            torch.manual_seed(batch_seed(0, b))
            model.loss(x)  # evaluate draws the ELBO's noise first
            per_image.append(model.bound.bpd(-model.log_prob(x, k=4)))
    iw = torch.cat(per_image)
    assert res["iw4_bpd"] == pytest.approx(iw.double().mean().item(), abs=1e-5)
    assert res["iw4_bpd_max_index"] == int(iw.argmax())
    assert res["iw4_bpd_max"] == pytest.approx(iw.max().item(), abs=1e-5)
    assert res["iw4_bpd_median"] == pytest.approx(iw.median().item(), abs=1e-5)


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


def test_a_trained_models_command_runs_on_this_machines_threads_not_the_training_runs(tmp_path):
    """pretrained:fashion_mnist was trained with train.threads=2; beside one other busy process on a 2-core
    machine, two threads made its sampling about 30 times slower than one. Without train.threads given, a
    command that reads it takes the auto setting."""
    from flowvae.pretrained import info
    from flowvae.runtime import default_threads

    assert info("fashion_mnist")["config"]["train"]["threads"] == 2 != default_threads()
    torch.set_num_threads(3)
    try:
        assert main(["evaluate", "--checkpoint", "pretrained:fashion_mnist", "--k", "1", "--limit", "8",
                     "--no-progress", "--out", str(tmp_path / "ev.json"), "data.dataset=fashion_mnist_sample"]) == 0
        assert torch.get_num_threads() == default_threads()
    finally:
        torch.set_num_threads(1)


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


def test_pretrained_lists_every_shipped_model_with_its_metrics(capsys):
    from flowvae.pretrained import available, info

    assert main(["pretrained"]) == 0
    out = capsys.readouterr().out
    assert available()
    for name in available():
        meta = info(name)
        line = next(ln for ln in out.splitlines() if ln.startswith(f"pretrained:{name} "))
        assert f"{meta['eval_full']['elbo_bpd']:.4f}" in line and f"{meta['step']:,}" in line
        assert meta["trained_by"] in out and meta["description"] in out
    name = available()[0]
    assert main(["pretrained", name]) == 0
    detail = capsys.readouterr().out
    assert "eval_full.kl_bpd" in detail and "analysis.swap_to_global_class" in detail
    assert all(f"pretrained:{other}" not in detail for other in available() if other != name)
    err = error_of(capsys, "pretrained", "fashion_mnist_v2")
    assert "pretrained:fashion_mnist" in err


# ------------------------------------------------------------------ the registry and its parser
def test_every_command_and_option_is_documented():
    ap = build_parser()
    subs = next(a for a in ap._actions if a.__class__.__name__ == "_SubParsersAction")
    assert list(subs.choices) == list(COMMANDS)
    helps = {a.dest: a.help for a in subs._choices_actions}
    for name, p in subs.choices.items():
        assert helps[name] and p.description and len(p.description) >= len(helps[name]), name
        for action in p._actions:
            if action.dest != "help":
                assert action.help and len(action.help) > 10, (name, action.dest)
        text = p.format_help()
        assert "--debug" in text and name in text


def test_shared_options_are_declared_once():
    """--checkpoint and --seed come from one parent parser each, so they cannot drift between commands."""
    source = inspect.getsource(cli)
    assert source.count('"--checkpoint"') == 1 and source.count('"--seed"') == 1
    ap = build_parser()
    subs = next(a for a in ap._actions if a.__class__.__name__ == "_SubParsersAction").choices
    with_checkpoint = [n for n, p in subs.items() if any("--checkpoint" in a.option_strings for a in p._actions)]
    assert set(with_checkpoint) == set(COMMANDS) - {"train", "pretrained", "prepare"}


def test_a_new_command_is_a_small_registered_class(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cli, "COMMANDS", dict(COMMANDS))  # the registration ends with the test

    @register
    class Hello(Command):
        name = "hello"
        help = "write a greeting"
        description = "Write a greeting to --out."
        options = ("out",)
        out_help = "text file to write"

        def add_arguments(self, p):
            p.add_argument("--who", default="world", help="whom to greet (default: %(default)s)")

        def run(self, args):
            cli.check_output(args.out).write_text(f"hello, {args.who}\n")
            return 0

    assert main(["hello", "--who", "flows", "--out", str(tmp_path / "h.txt")]) == 0
    assert (tmp_path / "h.txt").read_text() == "hello, flows\n"
    assert "hello" in build_parser().format_help()
    with pytest.raises(RuntimeError, match="unique name"):
        register(Hello)


def test_overrides_may_follow_options():
    args = parse_args(["train", "--out", "R", "train.lr=1e-3", "--no-progress", "train.seed=3", "--resume"])
    assert args.command == "train" and args.overrides == ["train.lr=1e-3", "train.seed=3"]
    assert args.no_progress and args.resume and args.out == "R"


# ------------------------------------------------------------------ errors: user errors, bugs, --debug
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


@pytest.mark.parametrize("argv,says", [
    (["swap", "--first", "100000"], "the test set has 128"),
    (["swap", "--n", "1000"], "the test set has 128"),
    (["interpolate", "--pairs", "100"], "the test set has 128"),
    (["reconstruct", "--first", "100000"], "the test set has 128"),
    (["evaluate", "model.z_dim=3"], "only data.*, eval.* and train.threads can be overridden"),
    (["evaluate", "train.lr=1"], "only data.*, eval.* and train.threads can be overridden"),
])
def test_clear_errors_exit_with_code_2(tiny_run, tmp_path, capsys, no_work, argv, says):
    """These exited with code 1 (a SystemExit with a message); the documented code is 2."""
    err = error_of(capsys, *argv, "--checkpoint", str(tiny_run), "--out", str(tmp_path / "o.png"))
    assert says in err


def test_cli_rejects_bad_counts(tiny_run, capsys):
    for args in (["sample", "--n", "0"], ["evaluate", "--k", "0"], ["swap", "--first", "-1"],
                 ["interpolate", "--steps", "1"], ["evaluate", "--limit", "-1"]):
        assert main([args[0], "--checkpoint", str(tiny_run), *args[1:]]) == 2
        assert "must be >=" in capsys.readouterr().err


@pytest.mark.parametrize("option,value", [("--temperature", "nan"), ("--temperature", "-1"),
                                          ("--z-temperature", "inf")])
def test_bad_temperatures_are_rejected(tiny_run, option, value, capsys):
    assert main(["sample", "--checkpoint", str(tiny_run), option, value]) == 2
    assert "must be a finite number >= 0" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(tiny_run, tmp_path, monkeypatch):
    """Only user errors become one line: a ValueError or TypeError from flowvae's own code is a bug."""
    import flowvae.engine.generate as generate

    for exc in (ValueError, TypeError, KeyError):
        def broken(*a, **k):
            raise exc("a bug in flowvae")

        monkeypatch.setattr(generate, "sample_images", broken)
        with pytest.raises(exc, match="a bug in flowvae"):
            main(["sample", "--checkpoint", str(tiny_run), "--n", "4", "--out", str(tmp_path / "s.png")])


def test_debug_shows_the_traceback_of_a_user_error(tmp_path, capsys):
    assert main(["sample", "--checkpoint", str(tmp_path / "nope"), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "CheckpointNotFound" in err
    assert err.splitlines()[-1].startswith("error: checkpoint not found")


def test_devices_that_do_not_exist(tiny_run, capsys):
    err = error_of(capsys, "sample", "--checkpoint", str(tiny_run), "--device", "cuda:99", "--out", str(tiny_run / "s.png"))
    assert "cuda:99" in err and "CUDA device" in err
    if not torch.cuda.is_available():
        err = error_of(capsys, "sample", "--checkpoint", str(tiny_run), "--device", "cuda:1", "--out", str(tiny_run / "s.png"))
        assert "torch sees no CUDA device" in err and "--device cpu" in err


# ------------------------------------------------------------------ outputs are checked before the work
def test_out_under_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    err = error_of(capsys, "train", "--config", TINY, "--out", str(tmp_path / "afile" / "run"), *QUIET)
    assert "--out" in err and "is a file, not a directory" in err


def test_out_that_cannot_be_created_names_the_option(tmp_path, capsys):
    err = error_of(capsys, "train", "--config", TINY, "--out", "/proc/flowvae_run", *QUIET)
    assert "--out /proc/flowvae_run" in err and "choose a writable --out" in err


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder on a 'read-only file system': writes into it fail with EROFS (root may write anywhere,
    so the file system is simulated where flowvae probes it)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real = tempfile.NamedTemporaryFile

    def probe(*a, dir=None, **k):
        if dir is not None and Path(dir) == ro:
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real(*a, dir=dir, **k)

    monkeypatch.setattr("flowvae.runtime.tempfile.NamedTemporaryFile", probe)
    return ro


COMMAND_LINES = {
    "evaluate": ["--k", "2", "--limit", "8"], "sample": ["--n", "4"], "swap": ["--n", "2"],
    "reconstruct": ["--n", "2"], "interpolate": ["--pairs", "1"], "analyze": [], "score": ["--limit", "8"],
    "resample-level": ["--n", "2", "--m", "1", "--level", "global"], "inpaint": ["--n", "2", "--steps", "1"], "denoise": ["--n", "2", "--steps", "1", "--sigma", "20"],
}
SUFFIX = {"evaluate": ".json", "analyze": ".json", "score": ".csv"}


@pytest.mark.parametrize("cmd", list(COMMAND_LINES))
def test_a_read_only_out_is_named_before_the_work(tiny_run, read_only, capsys, no_work, cmd):
    out = read_only / f"out{SUFFIX.get(cmd, '.png')}"
    err = error_of(capsys, cmd, "--checkpoint", str(tiny_run), "--out", str(out), *COMMAND_LINES[cmd])
    assert f"--out {out}" in err and "read-only file system" in err and "disk is full" not in err
    assert not out.exists()


@pytest.mark.parametrize("cmd", ["inpaint", "denoise"])
def test_save_dir_is_checked_before_the_work(tiny_run, read_only, tmp_path, capsys, no_work, cmd):
    grid = tmp_path / "grid.png"
    argv = [cmd, "--checkpoint", str(tiny_run), "--out", str(grid), *COMMAND_LINES[cmd]]
    err = error_of(capsys, *argv, "--save-dir", str(read_only / "each"))
    assert "--save-dir" in err and "read-only file system" in err
    (tmp_path / "afile").write_text("x")
    err = error_of(capsys, *argv, "--save-dir", str(tmp_path / "afile"))
    assert "--save-dir" in err and "is a file, not a directory" in err and "Errno" not in err
    assert not grid.exists()


def test_a_full_disk_is_named_before_the_work(tiny_run, tmp_path, monkeypatch, capsys, no_work):
    import shutil

    full = tmp_path / "full"
    full.mkdir()
    real = shutil.disk_usage

    def usage(path):
        u = real(path)
        return u._replace(free=4096) if Path(path) == full else u

    monkeypatch.setattr("flowvae.runtime.shutil.disk_usage", usage)
    err = error_of(capsys, "score", "--checkpoint", str(tiny_run), "--out", str(full / "s.csv"))
    assert f"no space left on the disk holding {full}" in err and "0.0 MB free" in err
    # training: the space of --out (not of the working directory), and nothing left behind
    err = error_of(capsys, "train", "--config", TINY, "--out", str(full / "run"), *QUIET)
    assert f"no space left on the disk holding {full}" in err
    assert not (full / "run").exists()


# ------------------------------------------------------------------ inputs are checked before the work
def test_swap_refuses_a_flow_only_model(glow_run, tmp_path, capsys, no_work):
    out = tmp_path / "swap.png"
    err = error_of(capsys, "swap", "--checkpoint", str(glow_run), "--out", str(out))
    assert "flow-only" in err and "global code" in err and not out.exists()


@pytest.mark.parametrize("cmd", ["score", "inpaint", "denoise"])
def test_images_of_another_size_are_refused_unless_resize(tiny_run, tmp_path, capsys, cmd):
    folder = _pngs(tmp_path / "imgs", [(32, 32)] * 2 + [(28, 28)])
    out = tmp_path / f"o{SUFFIX.get(cmd, '.png')}"
    argv = [cmd, "--checkpoint", str(tiny_run), "--images", str(folder), "--out", str(out), *COMMAND_LINES[cmd]]
    err = error_of(capsys, *argv)
    assert "2 of 3 images" in err and "not 28x28" in err and "32x32" in err and "--resize" in err and not out.exists()
    assert main([*argv, "--resize"]) == 0
    assert "note: resizing 2 of 3 images to 28x28" in capsys.readouterr().out and out.is_file()
    assert "--resize" in build_parser()._subparsers._group_actions[0].choices[cmd].format_help()


@pytest.mark.parametrize("content", ["text", "empty", "truncated", "pickle"])
def test_mask_files_load_safely(tiny_run, tmp_path, capsys, no_work, content):
    mask = tmp_path / "mask.pt"
    if content == "text":
        mask.write_text("these are not the pixels you are looking for\n")
    elif content == "empty":
        mask.write_bytes(b"")
    elif content == "truncated":
        torch.save(torch.zeros(28, 28, dtype=torch.bool), mask)
        mask.write_bytes(mask.read_bytes()[:200])
    else:
        torch.save({"mask": Path("x")}, mask)  # an object a safe load refuses
    err = error_of(capsys, "inpaint", "--checkpoint", str(tiny_run), "--mask", str(mask), "--out",
                   str(tmp_path / "i.png"), "--n", "2")
    assert "not a readable mask file" in err and "weights_only=False" not in err


def test_unknown_mask_lists_the_choices(tiny_run, tmp_path, capsys, no_work):
    err = error_of(capsys, "inpaint", "--checkpoint", str(tiny_run), "--mask", "top", "--out", str(tmp_path / "i.png"))
    assert "--mask top" in err and all(kind in err for kind in ("bottom", "centre", "random", "mask file"))


def test_an_absurd_sample_size_is_refused_with_its_size(tiny_run, tmp_path, capsys, no_work):
    err = error_of(capsys, "sample", "--checkpoint", str(tiny_run), "--n", "100000000", "--out", str(tmp_path / "s.png"))
    assert "--n 100000000" in err and "100,000,000 images" in err and "GiB" in err and "at most" in err


def test_grid_memory_estimate_scales_with_the_budget(monkeypatch):
    monkeypatch.setattr(cli, "available_memory", lambda: 2 * 2**30)
    cli.check_grid_memory(5000, (1, 28, 28), "sample --n 5000")  # ~0.3 GiB of a 1 GiB budget
    with pytest.raises(cli.UsageError, match=r"at most [\d,]+ images fit"):
        cli.check_grid_memory(50000, (1, 28, 28), "sample --n 50000")


@pytest.mark.parametrize("command, extra", [("evaluate", ["--k", "1", "--limit", "16"]),
                                            ("score", ["--k", "1", "--limit", "16"])])
def test_long_commands_print_progress_lines_unless_no_progress(tiny_run, tmp_path, capsys, monkeypatch, command, extra):
    """Off a terminal, progress is plain lines (every FLOWVAE_PROGRESS_SECONDS); --no-progress silences them."""
    monkeypatch.setenv("FLOWVAE_PROGRESS_SECONDS", "0")
    suffix = ".json" if command == "evaluate" else ".csv"
    for quiet in (False, True):
        argv = [command, "--checkpoint", str(tiny_run), "--out", str(tmp_path / f"{quiet}{suffix}"), *extra]
        assert main(argv + (["--no-progress"] if quiet else [])) == 0
        err = capsys.readouterr().err
        assert ("img [" in err) != quiet, err
