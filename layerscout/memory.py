"""Peak memory of each phase of a run, measured: on CUDA torch.cuda.max_memory_allocated (reset at the phase's
start); on CPU the process's peak resident set, VmHWM, reset at the phase's start through /proc/self/clear_refs
(Linux). Where that reset is refused, the peak is ru_maxrss, the process's peak so far. After each CPU phase, glibc's
malloc_trim hands freed heap back to the OS: torch's CPU tensors of a few MB come from the heap once glibc has
raised its mmap threshold, and without the trim a phase's freed activations (SmolLM2: ~0.9 GB) stay resident into
the next. Cost: a file read and a trim per phase.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import resource
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def rss_mib(field: str = "VmRSS") -> float | None:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process in MiB; None off Linux."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs); False where refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def trim_heap() -> None:
    """Return freed heap memory to the OS (glibc malloc_trim); a no-op elsewhere."""
    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):
        pass


def _max_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


class MemoryMeter:
    """`with meter.phase("rollouts"): ...` records that phase's peak in `peaks` (MiB) and logs it.
    `kind` says what was measured: "cuda_allocated" or "rss"."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.kind = "cuda_allocated" if self.cuda else "rss"
        self.peaks: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        reset = self.cuda or reset_peak_rss()
        try:
            yield
        finally:
            if self.cuda:
                peak = torch.cuda.max_memory_allocated() / 2**20
            else:
                peak = (rss_mib("VmHWM") if reset else None) or _max_rss_mib()
            self.peaks[name] = round(peak, 1)
            log.info("phase %s: peak %s %.0f MiB", name, self.kind, peak)
            if not self.cuda:
                trim_heap()
