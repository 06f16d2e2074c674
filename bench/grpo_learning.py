"""GRPO's learning gain: held-out exact-match accuracy of an SFT model before and after GRPO, over seeds.

For each seed, the demo's recipe (``gradascent.demo.DemoSettings``): the built-in arithmetic task at the
demo's difficulty, SFT of a randomly initialised preset from scratch, then GRPO on the exact-match reward.
Accuracy is that of greedy answers on the task's held-out problems (never a training prompt). Target: a
gain of at least 25 points in every seed, each seed (SFT + GRPO) within 10 minutes on a 2-core CPU.

    PYTHONPATH=src python bench/grpo_learning.py [--seeds 0,1,2] [--out runs/bench-grpo-learning]

The last line is one JSON object with before/after/gain/seconds per seed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(__file__))

from _common import emit, machine  # noqa: E402
from gradascent.demo import DemoSettings, run_demo  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default="runs/bench-grpo-learning")
    args = ap.parse_args()
    settings = DemoSettings()
    results = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        out = os.path.join(args.out, f"seed{seed}")
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        s = run_demo(out, seed=seed, settings=settings, progress=False, verbose=False)
        seconds = time.perf_counter() - t0
        results[seed] = {"before": round(s["accuracy_before"], 4), "after": round(s["accuracy_after"], 4),
                         "gain_points": round(100 * (s["accuracy_after"] - s["accuracy_before"]), 1),
                         "seconds": round(seconds, 1), "sft_seconds": round(s["sft_seconds"], 1)}
        r = results[seed]
        print(f"seed {seed}: accuracy {r['before']:.1%} -> {r['after']:.1%} ({r['gain_points']:+.1f} points), "
              f"{r['seconds']:.0f} s (SFT {r['sft_seconds']:.0f} s)", flush=True)
    passed = all(r["gain_points"] >= 25 and r["seconds"] <= 600 for r in results.values())
    emit({"bench": "grpo_learning", "date": time.strftime("%Y-%m-%d"), "machine": machine(),
          "model": settings.model, "task": {"max_operand": settings.max_operand, "ops": settings.ops},
          "sft_steps": settings.sft_steps, "grpo_steps": settings.grpo.steps,
          "seeds": {str(k): v for k, v in results.items()}, "target_met": passed})


if __name__ == "__main__":
    main()
