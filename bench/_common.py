"""What every bench script shares: timing, peak memory, the machine's matmul throughput, the JSON line.

Peak memory is the highest resident set size while a phase runs, minus the RSS when it started: CPU tensors
are invisible to tracemalloc, and ru_maxrss only ever grows over a process. On Linux the kernel's own
high-water mark (VmHWM) is reset at the start of each phase (``/proc/self/clear_refs``, "5") and read at its
end: it misses nothing and costs nothing. Elsewhere a background thread samples the RSS every millisecond,
which misses nothing that lasts longer, but takes the GIL a thousand times a second and so slows the code it
measures (by ~10% on a GRPO step here).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import torch


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_high_water_mark() -> bool:
    """Reset the kernel's peak-RSS counter of this process to its current RSS (Linux >= 4.0); False if the
    reset is not available or did not take (the counter still above the RSS by more than 4 MiB)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        hwm = _high_water_mark()
        return 0 < hwm <= rss_bytes() + (4 << 20)
    except OSError:
        return False


def _high_water_mark() -> int:
    """VmHWM of /proc/self/status in bytes (0 if absent)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRSS:
    """Context manager: ``.peak`` is the highest RSS seen inside, ``.delta`` that minus the RSS at entry.

    Not to be nested: entering one resets the process's peak counter that an enclosing one reads."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = rss_bytes()
        if not _reset_high_water_mark():
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread is None:
            self.peak = max(self.peak, _high_water_mark())
        else:
            self._stop.set()
            self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def delta(self) -> int:
        return self.peak - self.start


def time_calls(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def matmul_flops(n: int = 1024, repeats: int = 10, dtype: torch.dtype = torch.float32, device: str = "cpu",
                 mm: Callable[[torch.Tensor, torch.Tensor], Any] = torch.matmul) -> float:
    """Measured dense matmul throughput (FLOP/s) of this machine at the current thread count, of ``mm(a, b)``
    on two (n, n) matrices (the product or its transpose: the same FLOPs)."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(2):
        mm(a, b)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        mm(a, b)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def cpu_matmul_flops(n: int = 1024, repeats: int = 10) -> dict[str, float]:
    """Float32 (n x n) @ (n x n) throughput (FLOP/s) of this CPU through each kernel torch offers: ``blas``
    (``torch.mm``: MKL in the official wheels) and ``onednn`` (the kernels of ``gradascent.lm.onednn``, where
    available, whether or not the library routes through them on this CPU). On some CPUs they differ by 2x (MKL
    takes its AVX2 path on AMD's AVX-512 parts)."""
    from gradascent.lm import onednn

    rates = {"blas": matmul_flops(n, repeats)}
    if onednn.available():
        rates["onednn"] = matmul_flops(n, repeats, mm=lambda a, b: onednn.OneDNNLinear.apply(a, b, None))
    return rates


def machine() -> dict[str, Any]:
    return {"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


def _cpu_model() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    from gradascent.lm.onednn import cpuinfo_field

    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def emit(figures: dict[str, Any]) -> None:
    """The last line of every bench script: one JSON object with its figures."""
    print(json.dumps(figures, sort_keys=False))
