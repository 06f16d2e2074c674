"""GRPO's learning gain: held-out exact-match accuracy of an SFT model before and after GRPO, over seeds.

For each seed, the demo's recipe (``gradascent.demo.DemoSettings``, docs/grpo.md): two-number addition with
operands 0-49, SFT of a randomly initialised qwen2-1m from scratch (AdamW weight decay 1.0), stopped at the
first validation with 40% greedy accuracy (at most 1,200 steps), then GRPO on the exact-match reward. Accuracy
is that of greedy answers on 200 held-out test problems that neither phase trains on. Target: a gain of at
least 25 points in every seed, each seed (SFT + GRPO, evaluations included) within 10 minutes on a 2-core CPU.

``--jobs 2`` runs two seeds at a time, each on one torch thread (on 2 cores this is faster than one seed
at a time on two threads; a seed's wall time is then measured with the other seed running beside it).
The machine's load average is printed before and after: on a shared machine the times move with it.

    PYTHONPATH=src python bench/grpo_learning.py [--seeds 0,1,2] [--jobs 1] [--out runs/bench-grpo-learning]

The last line is one JSON object with before/after/gain/seconds per seed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

from _common import emit, machine  # noqa: E402


def one_seed(seed: int, out_root: str, threads: int | None) -> dict[str, float]:
    import torch

    from gradascent.demo import run_demo

    if threads:
        torch.set_num_threads(threads)
    out = os.path.join(out_root, f"seed{seed}")
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    s = run_demo(out, seed=seed, progress=False, verbose=False)
    return {"before": round(s["accuracy_before"], 4), "after": round(s["accuracy_after"], 4),
            "gain_points": round(100 * (s["accuracy_after"] - s["accuracy_before"]), 1),
            "seconds": round(time.perf_counter() - t0, 1), "sft_seconds": round(s["sft_seconds"], 1),
            "sft_step": s["sft_steps"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=1, help="seeds run at the same time (one torch thread each if > 1)")
    ap.add_argument("--out", default="runs/bench-grpo-learning")
    args = ap.parse_args()
    from gradascent.demo import DemoSettings

    settings = DemoSettings()
    seeds = [int(s) for s in args.seeds.split(",")]
    load_before = os.getloadavg()[0]
    print(f"load average before: {load_before:.2f}", flush=True)
    results: dict[int, dict[str, float]] = {}
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            futures = {seed: pool.submit(one_seed, seed, args.out, 1) for seed in seeds}
            results = {seed: f.result() for seed, f in futures.items()}
    else:
        results = {seed: one_seed(seed, args.out, None) for seed in seeds}
    for seed, r in results.items():
        print(f"seed {seed}: accuracy {r['before']:.1%} -> {r['after']:.1%} ({r['gain_points']:+.1f} points), "
              f"{r['seconds']:.0f} s (SFT {r['sft_seconds']:.0f} s, GRPO from SFT step {r['sft_step']})")
    load_after = os.getloadavg()[0]
    print(f"load average after: {load_after:.2f}")
    passed = all(r["gain_points"] >= 25 and r["seconds"] <= 600 for r in results.values())
    emit({"bench": "grpo_learning", "date": time.strftime("%Y-%m-%d"), "machine": machine(), "jobs": args.jobs,
          "load_before": round(load_before, 2), "load_after": round(load_after, 2), "model": settings.model,
          "task": {"max_operand": settings.max_operand, "ops": settings.ops},
          "grpo": {"steps": settings.grpo.steps, "prompts_per_step": settings.grpo.prompts_per_step,
                   "group_size": settings.grpo.group_size, "lr": settings.grpo.lr},
          "seeds": {str(k): v for k, v in results.items()},
          "min_gain_points": min(r["gain_points"] for r in results.values()), "target_met": passed})


if __name__ == "__main__":
    main()
