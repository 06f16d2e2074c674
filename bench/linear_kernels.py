"""Float32 linear layers: torch's F.linear (the BLAS of the build, MKL in the official wheels) against
gradascent.lm.onednn.OneDNNLinear (oneDNN's kernels), forward and backward, in one process.

Shapes: the projections of the qwen2-5m and qwen2-14m presets (q/k/v, o, gate/up, down) over M = 496 rows,
the rows of one GRPO training pass of the GRPO bench (16 completions x 31 positions). Each configuration
times forward + backward (dL/dx and dL/dW) of y = x W^T, interleaved, median of ``--repeats``. The figure is
GFLOP/s = 6 M K N / seconds. ``speedup`` in the JSON line is the median over the shapes of F.linear's time
over ours. oneDNN is called directly, whatever ``onednn.enabled()`` says on this CPU (the library routes its
linears through it by default only on x86 CPUs not made by Intel).

    PYTHONPATH=src python bench/linear_kernels.py [--repeats 30] [--rows 496]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _common import cpu_matmul_flops, emit, machine  # noqa: E402
from gradascent.lm import onednn  # noqa: E402

SHAPES = {  # (in, out) of each projection
    "qwen2-5m qkv": (256, 512), "qwen2-5m o": (256, 256), "qwen2-5m gate_up": (256, 1536),
    "qwen2-5m down": (768, 256), "qwen2-14m qkv": (384, 640), "qwen2-14m o": (384, 384),
    "qwen2-14m gate_up": (384, 2304), "qwen2-14m down": (1152, 384),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--rows", type=int, default=496)
    args = ap.parse_args()
    if not onednn.available():
        emit({"bench": "linear_kernels", "speedup": None, "reason": "this torch has no oneDNN linear"})
        return
    torch.manual_seed(0)
    rates = cpu_matmul_flops()
    print("1024^3 matmul: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in rates.items()))
    rows: dict[str, dict[str, float]] = {}
    for name, (k, n) in SHAPES.items():
        x = torch.randn(args.rows, k, requires_grad=True)
        w = torch.randn(n, k, requires_grad=True)
        g = torch.randn(args.rows, n)
        fns = {"F.linear": lambda: F.linear(x, w).backward(g),
               "onednn": lambda: onednn.OneDNNLinear.apply(x, w, None).backward(g)}
        times: dict[str, list[float]] = {key: [] for key in fns}
        for fn in fns.values():
            fn()
        for _ in range(args.repeats):
            for key, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
        med = {key: statistics.median(v) for key, v in times.items()}
        flops = 6 * args.rows * k * n
        rows[name] = {"blas_gflops": flops / med["F.linear"] / 1e9, "onednn_gflops": flops / med["onednn"] / 1e9,
                      "speedup": med["F.linear"] / med["onednn"]}
        r = rows[name]
        print(f"{name:18s} {args.rows}x{k}x{n}: F.linear {r['blas_gflops']:5.0f} GFLOP/s, oneDNN "
              f"{r['onednn_gflops']:5.0f} GFLOP/s: x{r['speedup']:.2f}")
    emit({"bench": "linear_kernels", "rows": args.rows, "repeats": args.repeats,
          "matmul_gflops_1024": {k: round(v / 1e9, 1) for k, v in rates.items()},
          "by_shape": {k: {kk: round(vv, 2) for kk, vv in v.items()} for k, v in rows.items()},
          "speedup": round(statistics.median(r["speedup"] for r in rows.values()), 2), "machine": machine()})


if __name__ == "__main__":
    main()
