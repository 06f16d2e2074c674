"""Float32 linear layers through oneDNN, forward and backward, for the library's own passes over a model.

torch's CPU ``matmul`` / ``F.linear`` call the BLAS it was built with (MKL in the official wheels), while
oneDNN, which torch also ships, has its own kernels. On CPUs where MKL does not take its widest code path
(AMD's AVX-512 parts: MKL runs its AVX2 kernels there) oneDNN's float32 products are about twice as fast for
the shapes of these models (BENCHMARKS.md, "oneDNN linears"), while on Intel's own CPUs MKL is the faster
of the two (oneDNN ran at ~0.77x of it on a Xeon). So the routing is on by default only on x86 CPUs of
another vendor than Intel (``preferred()``); ``GRADASCENT_ONEDNN=1`` forces it on wherever the op exists and
``GRADASCENT_ONEDNN=0`` off. The products are the same, y = x W^T + b and its two gradients, in float32 with
float32 accumulation; only the rounding differs (tests/lm/test_onednn.py).

``onednn_linears(model)`` routes every plain ``nn.Linear`` of ``model`` through ``OneDNNLinear`` for the
duration of a ``with`` block (the forward passes of log-probs, values and rewards use it); the backward
runs the same kernels whenever it runs. Nothing changes where the op is missing from this torch, off a CPU,
for other dtypes, for parameter subclasses (FSDP's DTensor), or where ``enabled()`` is false: those layers
keep their own ``forward``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from gradascent.errors import ConfigError


@functools.cache
def available() -> bool:
    """Whether this torch has oneDNN's linear with plain (unpacked) weights (an internal op: checked)."""
    mkldnn = getattr(torch.ops, "mkldnn", None)
    if not (torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_linear_pointwise")):
        return False
    try:  # the op exists in every recent build; make sure it also accepts plain tensors here
        x, w = torch.ones(2, 3), torch.ones(4, 3)
        return bool(torch.equal(_mm(x, w), torch.full((2, 4), 3.0)))
    except (RuntimeError, TypeError):
        return False


@functools.cache
def cpuinfo_field(name: str) -> str | None:
    """The first value of field ``name`` (``vendor_id``, ``model name``, ...) in Linux's /proc/cpuinfo; None
    where it is missing or unreadable."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(name):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_vendor() -> str | None:
    """The CPU's vendor string on Linux (``GenuineIntel``, ``AuthenticAMD``, ...); None where unreadable."""
    return cpuinfo_field("vendor_id")


def preferred() -> bool:
    """Whether oneDNN's float32 products are expected to beat MKL's here: an x86 CPU not made by Intel (MKL
    takes its AVX2 code path there). Intel CPUs, other architectures and unknown vendors keep MKL / torch's
    own BLAS."""
    vendor = cpu_vendor()
    return vendor is not None and vendor != "GenuineIntel" and platform.machine().lower() in ("x86_64", "amd64")


def enabled() -> bool:
    """Whether ``linear`` and ``onednn_linears`` route through oneDNN: ``available()``, and
    ``GRADASCENT_ONEDNN`` set to 1, or unset / ``auto`` and ``preferred()``; 0 switches it off."""
    switch = os.environ.get("GRADASCENT_ONEDNN", "auto").strip().lower()
    if switch not in ("0", "1", "auto", ""):
        raise ConfigError(f"GRADASCENT_ONEDNN must be 0, 1 or auto, got {switch!r}")
    if switch == "0" or not (available() and bool(torch.backends.mkldnn.enabled)):
        return False
    return switch == "1" or preferred()


def _mm(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """a @ b^T (+ bias) for 2-D a (M, K) and b (N, K), strided views allowed."""
    return torch.ops.mkldnn._linear_pointwise(a, b, bias, "none", [], "")


class OneDNNLinear(torch.autograd.Function):
    """y = x W^T + b with the three products (y, dL/dx = g W, dL/dW = g^T x) in oneDNN.

    Shapes: x (..., K), weight (N, K), bias (N,) or None -> y (..., N).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # noqa: ANN001
        x2 = x.reshape(-1, x.shape[-1])  # (M, K)
        ctx.save_for_backward(x2 if weight.requires_grad else None, weight if x.requires_grad else None)
        ctx.has_bias = bias is not None
        return _mm(x2, weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:  # noqa: ANN001
        x2, weight = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1])  # (M, N)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = _mm(g2, weight.t()).view(*grad.shape[:-1], weight.shape[1])  # g W: (M, K)
        if ctx.needs_input_grad[1]:
            gw = _mm(g2.t(), x2.t())  # g^T x: (N, K)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g2.sum(0)
        return gx, gw, gb


def _plain(t: Tensor | None) -> bool:
    return t is None or (type(t) in (Tensor, nn.Parameter) and t.device.type == "cpu" and t.dtype == torch.float32)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear`` through ``OneDNNLinear`` where it applies (float32 plain CPU tensors), else ``F.linear``."""
    return _routed_linear(x, weight, bias) if enabled() else F.linear(x, weight, bias)


def _routed_linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``linear`` once ``enabled()`` is known to hold (``onednn_linears`` checks it on entry, not per call)."""
    if x.numel() == 0 or not (_plain(x) and _plain(weight) and _plain(bias) and x.dim() >= 1):
        return F.linear(x, weight, bias)
    return OneDNNLinear.apply(x, weight, bias)


@contextlib.contextmanager
def onednn_linears(model: nn.Module) -> Iterator[nn.Module]:
    """Run every plain ``nn.Linear`` of ``model`` through ``linear`` inside the block; restored on exit.

    Only layers whose class is exactly ``nn.Linear`` are routed (a LoRA or quantized layer computes something
    else; its inner ``nn.Linear`` still is). Nested blocks over the same model are harmless. A model with
    gradient checkpointing on is left as it is: its backward recomputes layers outside the block, and the
    recomputation must save what the forward saved.
    """
    modules = list(model.modules())
    if not enabled() or any(vars(m).get("gradient_checkpointing") is True for m in modules):
        yield model
        return
    routed = []
    for m in modules:
        if type(m) is nn.Linear and "forward" not in m.__dict__:
            m.forward = functools.partial(_linear_forward, m)  # an instance attribute shadows the class's
            routed.append(m)
    try:
        yield model
    finally:
        for m in routed:
            del m.forward


def _linear_forward(m: nn.Linear, x: Tensor) -> Tensor:
    return _routed_linear(x, m.weight, m.bias)
