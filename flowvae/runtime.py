"""What every command needs from the machine: the device, CPU threads, writable outputs, torch files
read safely, and progress reports that suit a terminal as well as a log file.
"""
from __future__ import annotations

import contextlib
import errno
import os
import pickle
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .errors import FileFormatError, FlowVAEError


class OutputError(FlowVAEError, OSError):
    """An output path that cannot be written (raised before any work is done)."""


class DeviceError(FlowVAEError, ValueError):
    """A device that is not a device name, or that this machine does not have."""


# ---------------------------------------------------------------------------- device and precision
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_context(precision: str, device: torch.device):
    """The forward-pass context of ``train.precision`` (a no-op for fp32): coupling nets and the encoder
    run in reduced precision; log-dets, priors, KL and the loss stay float32 (see flows/base.py)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def resolve_device(name: Union[str, torch.device]) -> torch.device:
    """``auto | cpu | cuda | cuda:N`` (or a torch.device) -> torch.device, with a clear error when it
    cannot be used here."""
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise DeviceError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    index = name[len("cuda:"):] if name.startswith("cuda:") else None
    if name not in ("cpu", "cuda") and not (index is not None and index.isdigit()):
        raise DeviceError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name} was asked for but torch sees no CUDA device "
                             f"(torch.cuda.is_available() is False); use --device cpu")
        if index is not None and int(index) >= torch.cuda.device_count():
            raise DeviceError(f"device {name} was asked for but only {torch.cuda.device_count()} CUDA device(s) "
                             f"are visible (cuda:0..cuda:{torch.cuda.device_count() - 1})")
    return torch.device(name)


# ---------------------------------------------------------------------------- threads
def default_threads() -> int:
    """Intra-op CPU threads when ``train.threads`` is 0 (auto): one.

    Measured on a 2-core VM (README, "A busy machine"): with two other CPU-bound processes running,
    torch's default (one thread per core) made the quickstart model's steps ~20-50x slower, because
    every parallel region waits for its slowest thread and a descheduled thread stalls them all; one
    thread lost only its share of the cores. On a quiet machine two threads gained little for models
    of this size. Set ``train.threads=N`` (or -1 for torch's default) on a machine you have to yourself.
    """
    return 1


def apply_threads(threads: int) -> int:
    """Set torch's intra-op threads from a ``train.threads`` value (0 = auto, -1 = torch's default);
    returns the number in use."""
    if threads > 0:
        torch.set_num_threads(threads)
    elif threads == 0:
        torch.set_num_threads(default_threads())
    return torch.get_num_threads()


# ---------------------------------------------------------------------------- outputs
# Free space below which an output is refused up front: enough for a grid, a CSV or a first checkpoint of
# the small models; a larger file can still meet a full disk later (reported as such, never as a traceback).
MIN_FREE_BYTES = 16 * 2**20


def _fail(option: str, path: Path, why: str) -> OutputError:
    return OutputError(f"{option} {path}: {why}")


def _free_bytes(folder: Path) -> float:
    try:
        return shutil.disk_usage(folder).free
    except OSError:  # a file system that does not say (procfs, some network mounts)
        return float("inf")


def _free_mb(folder: Path) -> str:
    free = _free_bytes(folder)
    return f"{free / 2**20:.1f} MB free" if free != float("inf") else "free space unknown"


def _why_not_writable(folder: Path, e: OSError, option: str) -> str:
    """The real cause of a failed write into ``folder``, in words, with what to do."""
    if e.errno == errno.EROFS:
        return f"{folder} is on a read-only file system; choose a writable {option}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the disk holding {folder} ({_free_mb(folder)}); free some space or choose another {option}"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"no permission to write in {folder}; choose a writable {option}"
    return f"cannot write to {folder} ({e.strerror or e}); choose a writable {option}"


def check_output(path: Union[str, Path], option: str = "--out", is_dir: bool = False,
                 min_free: int = MIN_FREE_BYTES) -> Path:
    """Make sure ``path`` (a file, or a directory with ``is_dir``) can be written, before the work that
    produces it: a file must not be a directory (nor a directory a file, nor sit under a file), and a probe
    file written and flushed in the nearest existing folder must succeed (nothing is left behind), with at
    least ``min_free`` bytes free there. Raises OutputError naming ``option`` and the real cause (read-only
    file system, no permission, no space, not a directory)."""
    path = Path(path).expanduser()
    folder = path if is_dir else path.parent
    if not is_dir and path.is_dir():
        raise _fail(option, path, "is a directory; give a file name")
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    if not existing.is_dir():  # a file where a folder must go
        what = "is a file, not a directory" if existing == path else f"{existing} is a file, not a directory"
        raise _fail(option, path, f"{what}; choose another {option}")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".flowvae-write-test-") as fh:
            fh.write(b"\0" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as e:
        raise _fail(option, path, _why_not_writable(existing, e, option)) from None
    if min_free and _free_bytes(existing) < min_free:
        raise _fail(option, path, _why_not_writable(existing, OSError(errno.ENOSPC, "no space"), option))
    if path.exists() and not is_dir and not os.access(path, os.W_OK):
        raise _fail(option, path, f"the file exists and is not writable; choose another {option}")
    return path


def available_memory() -> int:
    """Bytes of memory this process could still allocate (Linux: MemAvailable; else 8 GiB assumed)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 8 * 2**30


def describe_write_error(path: Optional[Union[str, Path]], e: BaseException) -> str:
    """A short reason for a failed write of ``path`` (None: unknown), saying when the disk is full (torch
    reports a full disk as 'unexpected pos ...' or 'PytorchStreamWriter failed writing file') and how much
    is free on the disk that holds ``path``."""
    folder = Path(path).parent if path is not None else None
    free = _free_bytes(folder) if folder is not None else float("inf")
    chain, seen = [], e
    while seen is not None and len(chain) < 5:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    codes = {getattr(x, "errno", None) for x in chain}
    if codes & {errno.ENOSPC, errno.EDQUOT} or free < 64 * 2**20:
        where = f" ({free / 2**20:.1f} MB free on the disk holding {folder})" if free != float("inf") else ""
        return f"the disk is full{where}"
    if errno.EROFS in codes:
        return "the file system is read-only"
    if codes & {errno.EACCES, errno.EPERM}:
        return "permission denied"
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"{type(e).__name__}: {first[:200]}"


# ---------------------------------------------------------------------------- torch files the user gives
def _why_unreadable(e: Exception) -> str:
    """The reason a torch file failed to load, without torch's advice to load it with weights_only=False
    (that would run whatever code the file holds)."""
    text = str(e)
    if isinstance(e, pickle.UnpicklingError) or "weights_only" in text:
        return ("it holds Python objects that a safe load (weights_only=True) refuses; flowvae never writes "
                "those, so the file is from another program or has been altered")
    if isinstance(e, EOFError) or "central directory" in text or "zip archive" in text:
        return "it ends early: the file is truncated or damaged"
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(e).__name__}: {first[:300]}"


# The first bytes of files people pass by mistake where a torch file is expected.
_MAGIC = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
          (b"BM", "a BMP image"), (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"),
          (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"), (b"\x93NUMPY", "a NumPy .npy file"))


def describe_file(path: Union[str, Path]) -> Optional[str]:
    """What a file that should hold torch tensors is instead ("an empty file", "a PNG image", "a text
    file", ...), from its first bytes; None when it starts like a torch file (a zip archive or a pickle)."""
    with open(path, "rb") as fh:
        head = fh.read(512)
    if not head:
        return "an empty file"
    if head.startswith((b"PK\x03\x04", b"\x80")):  # torch's zip format, or a legacy pickle
        return None
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "not a torch file (it starts with neither a zip archive nor a pickle)"
    return "a text file" if b"\0" not in head else "not a torch file"


def load_torch_file(path: Union[str, Path], what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU for a file the user gave (a checkpoint, a mask):
    FileFormatError naming ``what`` the file is instead, or why it cannot be read, and never torch's
    advice to load it unsafely."""
    kind = describe_file(path)
    if kind is not None:
        raise FileFormatError(f"{path} is not a readable {what}: it is {kind}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign files raise many different errors (EOFError, KeyError, ...)
        raise FileFormatError(f"{path} is not a readable {what} ({_why_unreadable(e)})") from None


# ---------------------------------------------------------------------------- progress
def _clock(seconds: float) -> str:
    if not seconds == seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def progress_interval() -> float:
    """Seconds between plain progress lines when the output is not a terminal (FLOWVAE_PROGRESS_SECONDS)."""
    try:
        return max(0.0, float(os.environ.get("FLOWVAE_PROGRESS_SECONDS", "30")))
    except ValueError:
        return 30.0


class Progress:
    """A progress bar on a terminal; otherwise (a log file, nohup, Slurm, CI) one plain line every
    ``interval`` seconds and one at the end, so logs are not flooded with carriage-return updates."""

    def __init__(self, total: Optional[int] = None, desc: str = "", unit: str = "it", enabled: bool = True,
                 leave: bool = True, interval: Optional[float] = None, bar_format: Optional[str] = None,
                 initial: int = 0):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.n, self.postfix = initial, ""
        self.stream = sys.stderr
        self.interval = progress_interval() if interval is None else interval
        self.start = self._last = time.monotonic()
        self.bar = None
        self.lines = 0
        if enabled and _isatty(self.stream):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True, file=self.stream,
                            bar_format=bar_format, initial=initial)

    def set_total(self, total: Optional[int]) -> None:
        self.total = total
        if self.bar is not None and self.bar.total != total:
            self.bar.total = total
            self.bar.refresh()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.enabled and time.monotonic() - self._last >= self.interval:
            self._line()

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=False)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=sys.stdout, flush=True)

    def _line(self) -> None:
        self._last = time.monotonic()
        count = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        extra = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {count} {self.unit} [{_clock(self._last - self.start)}{extra}]", file=self.stream, flush=True)
        self.lines += 1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.n:
            self._line()
        self.enabled = False


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
