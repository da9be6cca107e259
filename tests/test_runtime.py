"""What every command needs from the machine (flowvae/runtime.py): devices, threads, output checks that name
the real cause, and progress reports that suit a log file."""
import errno
import os
import shutil

import pytest
import torch

from flowvae.errors import FileFormatError, FlowVAEError
from flowvae.runtime import (DeviceError, OutputError, Progress, apply_threads, check_output, default_threads,
                             describe_file, describe_write_error, load_torch_file, resolve_device)


def test_devices_that_do_not_exist():
    for name in ("tpu", "cuda:x", 3):
        with pytest.raises(DeviceError, match="device must be auto, cpu, cuda or cuda:N"):
            resolve_device(name)
    with pytest.raises(ValueError, match="cuda:99"):  # a DeviceError is also a ValueError for API callers
        resolve_device("cuda:99")
    assert resolve_device("cpu") == torch.device("cpu")


def test_threads_auto_explicit_and_torchs_default():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        apply_threads(0)
        assert torch.get_num_threads() == default_threads()
        apply_threads(3)
        assert torch.get_num_threads() == 3
        torch.set_num_threads(2)
        apply_threads(-1)  # -1: leave torch's setting alone
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_plain_progress_lines_follow_the_interval(capsys):
    bar = Progress(total=5, desc="job", unit="img", interval=3600)
    for _ in range(5):
        bar.update(1)
    bar.close()
    assert [ln.split(" [")[0] for ln in capsys.readouterr().err.splitlines()] == ["job: 5/5 img"]  # the closing line
    bar = Progress(total=3, desc="job", unit="img", interval=0)
    for _ in range(3):
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert [ln.split(" [")[0] for ln in lines] == ["job: 1/3 img", "job: 2/3 img", "job: 3/3 img", "job: 3/3 img"]


def _failing_probe(monkeypatch, code):
    def probe(*a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("flowvae.runtime.tempfile.NamedTemporaryFile", probe)


@pytest.mark.parametrize("code,says", [(errno.EROFS, "is on a read-only file system"),
                                       (errno.EACCES, "no permission to write in"),
                                       (errno.ENOSPC, "no space left on the disk holding")])
def test_output_errors_name_the_real_cause(tmp_path, monkeypatch, code, says):
    _failing_probe(monkeypatch, code)
    with pytest.raises(OutputError) as e:
        check_output(tmp_path / "a" / "out.png", "--out")
    msg = str(e.value)
    assert msg.startswith(f"--out {tmp_path / 'a' / 'out.png'}: ") and says in msg
    assert str(tmp_path) in msg.split(": ", 1)[1]  # the folder probed: the nearest one that exists
    assert isinstance(e.value, FlowVAEError) and isinstance(e.value, OSError)


def test_output_kinds(tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    with pytest.raises(OutputError, match="is a directory; give a file name"):
        check_output(tmp_path / "adir", "--out")
    with pytest.raises(OutputError, match=r"--save-dir .*afile: is a file, not a directory"):
        check_output(tmp_path / "afile", "--save-dir", is_dir=True)
    with pytest.raises(OutputError, match="afile is a file, not a directory"):
        check_output(tmp_path / "afile" / "x.png", "--out")
    assert check_output(tmp_path / "new" / "deeper" / "x.png") == tmp_path / "new" / "deeper" / "x.png"
    assert not (tmp_path / "new").exists()  # nothing is created
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob(".flowvae-write-test-*"))


def test_too_little_free_space_is_refused_up_front(tmp_path, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr("flowvae.runtime.shutil.disk_usage", lambda p: real(p)._replace(free=1024))
    with pytest.raises(OutputError, match=r"no space left on the disk holding .* \(0.0 MB free\)"):
        check_output(tmp_path / "x.csv", "--out")
    assert check_output(tmp_path / "x.csv", "--out", min_free=0) == tmp_path / "x.csv"


def test_a_write_error_without_a_path_does_not_blame_the_working_directory():
    said = describe_write_error(None, OSError(errno.ENOSPC, "No space left on device"))
    assert said == "the disk is full"
    said = describe_write_error("/somewhere/run/checkpoint.pt", OSError(errno.EROFS, "Read-only file system"))
    assert said == "the file system is read-only"


@pytest.mark.parametrize("content,kind", [(b"", "an empty file"), (b"model: {}\n", "a text file"),
                                          (b"\x89PNG\r\n\x1a\n" + bytes(32), "a PNG image"),
                                          (b"\xff\xd8\xff\xe0" + bytes(32), "a JPEG image")])
def test_files_that_are_not_torch_files_are_named(tmp_path, content, kind):
    path = tmp_path / "f.pt"
    path.write_bytes(content)
    assert describe_file(path) == kind
    with pytest.raises(FileFormatError, match=f"is not a readable mask file: it is {kind}"):
        load_torch_file(path, "mask file")


def test_torch_files_load_and_truncated_ones_say_so(tmp_path):
    good = tmp_path / "m.pt"
    torch.save(torch.ones(3, dtype=torch.bool), good)
    assert describe_file(good) is None and load_torch_file(good, "mask").tolist() == [True, True, True]
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(FileFormatError, match="truncated"):
        load_torch_file(cut, "mask")
