"""Up-front size checks: what a call will hold in memory against what the device has free, so an absurd
request is refused at once with its size and the estimate, not after minutes in the allocator.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import torch


def human_bytes(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _read_int(path: Path) -> Optional[int]:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_free() -> Optional[int]:
    """Room left under this process's cgroup memory limit (v2, then v1), or None without a limit."""
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        limit = _read_int(Path("/sys/fs/cgroup") / limit_file)
        usage = _read_int(Path("/sys/fs/cgroup") / usage_file)
        if limit is not None and usage is not None and limit < 2**60:
            return max(0, limit - usage)
    return None


def _host_free() -> Optional[int]:
    """MemAvailable of /proc/meminfo (Linux), else free physical pages; the cgroup limit if smaller."""
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    group = _cgroup_free()
    return free if group is None else min(free, group)


def available_bytes(device: Union[str, torch.device]) -> Optional[int]:
    """Bytes a new allocation on ``device`` can still get (None when the device does not say): the host's
    available memory for CPU, the driver's free memory plus PyTorch's cached-but-unused blocks for CUDA."""
    device = torch.device(device)
    if device.type == "cpu":
        return _host_free()
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return None


def check_fits(nbytes: int, what: str, device: Union[str, torch.device], fix: str) -> None:
    """Raise a ValueError naming ``what`` and the estimate when ``nbytes`` exceed what ``device`` has free
    (nothing is checked when the device does not report its free memory)."""
    free = available_bytes(device)
    if free is not None and nbytes > free:
        raise ValueError(f"{what} would need about {human_bytes(nbytes)} of memory on {torch.device(device)}, "
                         f"which has {human_bytes(free)} free. {fix}")
