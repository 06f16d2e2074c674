"""Sampling throughput: gradascent.lm.generate against transformers' model.generate, in one process.

Workload (fixed): 64 prompts of 12 random tokens, 32 new tokens each, plain sampling (temperature 1, no
top-k, no top-p), no EOS (every row produces exactly 32 tokens, so both sides do the same work), on the
random-init presets qwen2-5m (~5.5 M parameters) and qwen2-14m (~13.8 M) with the 99-token character
vocabulary. Each configuration is timed ``--repeats`` times, interleaved with the others so that a change
in machine load hits all of them alike; the figure is the median. Tokens/s = 64 * 32 / seconds.

Rows:
    hf            model.generate(do_sample=True, top_k=0), float32
    ours-fp32     generate(engine='auto' -> fused), float32: the same arithmetic as HF (packed MKL or oneDNN
                  products, whichever ``lm.generate.packed_kernel`` picks on this CPU: the JSON line says)
    ours-hf       generate(engine='hf'): our loop over the model's forward with a StaticCache, float32
    ours-bf16     generate(dtype='bfloat16'): fused engine computing in bfloat16 (weights rounded once per call)

``speedup`` in the JSON line is ours-fp32 / hf (same dtype); ``speedup_bf16`` is ours-bf16 / hf.

    PYTHONPATH=src python bench/generate_vs_hf.py [--repeats 5] [--models qwen2-5m,qwen2-14m] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

import torch  # noqa: E402

from _common import emit, machine  # noqa: E402
from gradascent.lm.generate import generate, packed_kernel  # noqa: E402
from gradascent.lm.models import build_model, count_parameters  # noqa: E402

B, P, NEW = 64, 12, 32


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default="qwen2-5m,qwen2-14m")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    results: dict[str, dict[str, float]] = {}
    for name in args.models.split(","):
        model = build_model(name).eval()
        model.generation_config.eos_token_id = None  # no EOS: every row runs the full 32 steps
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(3, 99, (B, P), generator=gen)
        mask = torch.ones(B, P, dtype=torch.bool)

        def hf() -> int:
            out = model.generate(input_ids=ids, attention_mask=mask.long(), max_new_tokens=NEW, do_sample=True,
                                 temperature=1.0, top_k=0, top_p=1.0, pad_token_id=0)
            return (out.shape[1] - P) * B

        def ours(engine: str = "auto", dtype: str | None = None) -> int:
            g = generate(model, ids, mask, max_new_tokens=NEW, eos_token_ids=[], pad_token_id=0, engine=engine,
                         dtype=dtype, generator=gen)
            return int(g.completion_mask.sum())

        runs = {"hf": hf, "ours-fp32": ours, "ours-hf": lambda: ours("hf"), "ours-bf16": lambda: ours(dtype="bfloat16")}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for fn in runs.values():  # warm-up
            fn()
        with torch.inference_mode():
            for _ in range(args.repeats):
                for key, fn in runs.items():
                    t0 = time.perf_counter()
                    n_tokens = fn()
                    times[key].append(time.perf_counter() - t0)
                    assert n_tokens == B * NEW, (key, n_tokens)
        tps = {k: B * NEW / statistics.median(v) for k, v in times.items()}
        results[name] = tps
        print(f"{name} ({count_parameters(model) / 1e6:.2f} M parameters), tokens/s (median of {args.repeats}):")
        for k, v in tps.items():
            print(f"  {k:10s} {v:8.0f}   x{v / tps['hf']:.2f} vs hf")

    speedups = {n: r["ours-fp32"] / r["hf"] for n, r in results.items()}
    speedups_bf16 = {n: r["ours-bf16"] / r["hf"] for n, r in results.items()}
    emit({
        "bench": "generate_vs_hf",
        "workload": f"{B} prompts x {NEW} new tokens, sampling, float32",
        "tokens_per_s": {n: {k: round(v) for k, v in r.items()} for n, r in results.items()},
        "speedup": round(min(speedups.values()), 2),
        "speedup_by_model": {n: round(v, 2) for n, v in speedups.items()},
        "speedup_bf16": round(min(speedups_bf16.values()), 2),
        "speedup_bf16_by_model": {n: round(v, 2) for n, v in speedups_bf16.items()},
        "packed_kernel": packed_kernel(),  # the BLAS of the fused engine's float32 products on this CPU
        "load_average_1min": os.getloadavg()[0],
        "machine": machine(),
    })


if __name__ == "__main__":
    main()
