"""Learning targets of the classic trainers (issue 3), 5 seeds each, with the packaged presets.

    PPO-Clip, PPO-Penalty   CartPole-v1   deterministic eval mean >= 475 within 100k env steps
    A2C                     CartPole-v1   >= 475 within 200k
    REINFORCE               CartPole-v1   >= 475 within 300k
    PPO-Clip                Pendulum-v1   >= -250 within 200k

A target holds when at least 4 of 5 seeds reach the threshold. Evaluation is periodic (every
``--eval-steps`` env steps, rounded to whole updates; 10 deterministic episodes) and a seed "reaches" the
threshold the first time an evaluation's mean crosses it; the run then stops. The figure reported per seed
is the env steps at that evaluation (or null).

    python bench/classic_learning.py            # the full bench
    python bench/classic_learning.py --quick    # one seed, a tenth of each budget: a smoke run

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gradascent.algos.presets import classic_config, get_algo  # noqa: E402

TARGETS = [
    # name, algo, env, budget, threshold, eval every (env steps)
    ("ppo_cartpole", "ppo", "CartPole-v1", 100_000, 475.0, 4_096),
    ("ppo_penalty_cartpole", "ppo-penalty", "CartPole-v1", 100_000, 475.0, 4_096),
    ("a2c_cartpole", "a2c", "CartPole-v1", 200_000, 475.0, 5_000),
    ("reinforce_cartpole", "reinforce", "CartPole-v1", 300_000, 475.0, 10_000),
    ("ppo_pendulum", "ppo", "Pendulum-v1", 200_000, -250.0, 8_192),
]


def steps_per_update(cfg) -> int:
    if hasattr(cfg, "num_steps"):
        return cfg.num_envs * cfg.num_steps
    return cfg.num_envs * 200  # REINFORCE: episodes per update; a CartPole episode runs up to 500 steps


def run_seed(algo: str, env: str, budget: int, threshold: float, eval_steps: int, seed: int) -> dict:
    base = classic_config(algo, env, overrides={"total_steps": budget, "seed": seed})
    eval_every = max(1, round(eval_steps / steps_per_update(base)))
    cfg = classic_config(algo, env, overrides={"total_steps": budget, "seed": seed, "eval_every": eval_every,
                                               "stop_at_return": threshold, "tensorboard": False})
    with tempfile.TemporaryDirectory() as out:
        summary = get_algo(algo).module.train(cfg, out, progress=False)
    reached = summary["reached"]
    return {"seed": seed, "reached_env_steps": reached["env_steps"] if reached else None,
            "train_seconds": round(reached["train_seconds"] if reached else summary["train_seconds"], 2),
            "final_eval": summary["eval_return_mean"], "env_steps": summary["env_steps"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed, a tenth of each budget (smoke run)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--only", nargs="*", help="names of targets to run (default: all)")
    args = parser.parse_args()
    seeds = [1] if args.quick else list(range(1, args.seeds + 1))
    results = {}
    t0 = time.perf_counter()
    for name, algo, env, budget, threshold, eval_steps in TARGETS:
        if args.only and name not in args.only:
            continue
        if args.quick:
            budget //= 10
        runs = [run_seed(algo, env, budget, threshold, eval_steps, s) for s in seeds]
        hit = [r["reached_env_steps"] for r in runs if r["reached_env_steps"] is not None]
        need = math.ceil(0.8 * len(seeds))
        results[name] = {
            "algo": algo, "env": env, "budget": budget, "threshold": threshold,
            "reached": len(hit), "seeds": len(seeds), "target_met": len(hit) >= need,
            "median_steps_to_threshold": statistics.median(hit) if hit else None,
            "runs": runs,
        }
        print(f"{name:22s} {len(hit)}/{len(seeds)} reached {threshold:g} within {budget} steps "
              f"(need {need}); steps: {[r['reached_env_steps'] for r in runs]}; "
              f"train s: {[r['train_seconds'] for r in runs]}", flush=True)
    results["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
