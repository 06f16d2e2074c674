"""Peak memory of per-token log-probs: gradascent.lm.completion_logprobs against the naive full log-softmax.

Model: the qwen2-5m architecture with a 32,000-token vocabulary (random init, 13.7 M parameters, float32).
Batch: B = 64 sequences of a 16-token prompt and T = 256 completion tokens.

    naive   logits = model(...).logits                       (B, P + T, V) float32
            torch.log_softmax(logits[:, P-1:-1], -1).gather(-1, completion[..., None])
    ours    completion_logprobs(model, ...): decoder hidden states, then the LM head over chunks of the
            scored positions, gather minus logsumexp per chunk

Method: the kernel's high-water mark of this process's resident memory (VmHWM in /proc/self/status) is reset
(``echo 5 > /proc/self/clear_refs``) right before each phase; the phase's peak is VmHWM after it minus the
resident memory (VmRSS) before it. This counts every page the phase touched and misses no short spike,
unlike sampling. So that a phase cannot reuse pages an earlier phase freed (which would hide its memory), the
script re-executes itself with glibc's ``MALLOC_MMAP_THRESHOLD_=65536``: every block of 64 KiB or more is
mapped on allocation and unmapped on free. Each phase runs twice and the second figure is kept (the first
pays one-time allocations). A training row repeats the comparison with a backward pass at B = 16.

    PYTHONPATH=src python bench/logprob_memory.py
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("MALLOC_MMAP_THRESHOLD_") != "65536":  # see the method above; must be set before start-up
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    os.execv(sys.executable, [sys.executable, *sys.argv])
sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from _common import emit, machine  # noqa: E402
from gradascent.lm.logprobs import completion_logprobs  # noqa: E402
from gradascent.lm.models import count_parameters, position_ids_from_mask, preset_config  # noqa: E402

V, P, T = 32_000, 16, 256


def _status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def peak_bytes(fn: Callable[[], torch.Tensor]) -> tuple[int, float, torch.Tensor]:
    """(peak resident bytes above the start, seconds, result) of one call of ``fn``."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current VmRSS
    start = _status("VmRSS")
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    return _status("VmHWM") - start, seconds, out


def naive_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask):  # type: ignore[no-untyped-def]
    ids = torch.cat([prompt_ids, completion_ids], 1)
    mask = torch.cat([prompt_mask, completion_mask], 1)
    logits = model(input_ids=ids, attention_mask=mask.long(), position_ids=position_ids_from_mask(mask)).logits
    logp = torch.log_softmax(logits[:, P - 1:-1].float(), dim=-1)
    return logp.gather(-1, completion_ids[..., None]).squeeze(-1) * completion_mask


def ours_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask):  # type: ignore[no-untyped-def]
    return completion_logprobs(model, prompt_ids, prompt_mask, completion_ids, completion_mask)


def main() -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(preset_config("qwen2-5m", vocab_size=V)).eval()
    print(f"model: qwen2-5m dims, V={V}, {count_parameters(model) / 1e6:.1f} M parameters")
    gen = torch.Generator().manual_seed(0)

    def batch(B: int):  # type: ignore[no-untyped-def]
        pi = torch.randint(3, V, (B, P), generator=gen)
        ci = torch.randint(3, V, (B, T), generator=gen)
        return pi, torch.ones(B, P, dtype=torch.bool), ci, torch.ones(B, T, dtype=torch.bool)

    figures: dict[str, dict[str, float]] = {}
    # Inference (policy_old / reference log-probs): B = 64.
    inputs = batch(64)
    results = {}
    with torch.no_grad():
        for name, fn in (("ours", ours_logprobs), ("naive", naive_logprobs)):
            for _ in range(2):
                peak, secs, results[name] = peak_bytes(lambda: fn(model, *inputs))  # noqa: B023
            figures[f"inference_{name}"] = {"peak_mib": peak / 2**20, "seconds": secs}
    diff = float((results["ours"] - results["naive"]).abs().max())

    # Training (policy log-probs with a backward pass): B = 16.
    inputs = batch(16)

    def train(fn):  # type: ignore[no-untyped-def]
        def run() -> torch.Tensor:
            model.zero_grad(set_to_none=True)
            lp = fn(model, *inputs)
            lp.sum().backward()
            return lp.detach()
        return run

    for name, fn in (("ours", ours_logprobs), ("naive", naive_logprobs)):
        for _ in range(2):
            peak, secs, out = peak_bytes(train(fn))
        figures[f"train_{name}"] = {"peak_mib": peak / 2**20, "seconds": secs}
    model.zero_grad(set_to_none=True)

    logits_mib = 64 * (P + T) * V * 4 / 2**20
    print(f"one float32 (B, P+T, V) logits tensor at B=64: {logits_mib:.0f} MiB")
    for key, f in figures.items():
        print(f"  {key:16s} peak {f['peak_mib']:8.0f} MiB   {f['seconds']:6.2f} s")
    ratio = figures["inference_ours"]["peak_mib"] / figures["inference_naive"]["peak_mib"]
    ratio_train = figures["train_ours"]["peak_mib"] / figures["train_naive"]["peak_mib"]
    print(f"ours / naive peak: inference (B=64) {ratio:.3f}, training (B=16) {ratio_train:.3f}; "
          f"largest |ours - naive| log-prob difference {diff:.3g}")
    emit({
        "bench": "logprob_memory",
        "shape": {"B": 64, "P": P, "T": T, "V": V, "train_B": 16},
        "peak_mib": {k: round(f["peak_mib"], 1) for k, f in figures.items()},
        "seconds": {k: round(f["seconds"], 2) for k, f in figures.items()},
        "ratio": round(ratio, 4),
        "ratio_train": round(ratio_train, 4),
        "max_abs_difference": diff,
        "method": "VmHWM after minus VmRSS before, high-water mark reset via /proc/self/clear_refs",
        "machine": machine(),
    })


if __name__ == "__main__":
    main()
