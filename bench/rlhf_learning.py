"""RLHF on the built-in preference task, end to end, over several seeds: does PPO beat the SFT model on the
hidden ground truth, with a good reward model and the KL to the reference held near its target?

    HF_HUB_OFFLINE=1 python bench/rlhf_learning.py [--seeds 0 1 2] [--out runs/bench-rlhf]

Each seed runs the `gradascent rlhf` chain with its built-in default config (RLHFConfig(), only `seed` and
`out` changed): SFT of the qwen2-1m preset from scratch on the chosen completions, the reward model on
6,000 pairs, then PPO. Figures per seed: held-out pairwise accuracy of the reward model, the hidden score
of greedy completions on held-out prompts for the SFT model and for the PPO policy, the KL of the policy to
the SFT reference per completion (exact over the vocabulary along sampled completions, in nats) against the
controller's target, and the wall time of the whole chain. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, machine  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the chain")
    p.add_argument("--out", default="runs/bench-rlhf", help="where the runs are written (one directory per seed)")
    a = p.parse_args()

    from gradascent.algos.rlhf import RLHFConfig, run_rlhf

    keys = ("rm_accuracy", "hidden_score_sft", "hidden_score_policy", "kl_to_reference", "wall_s")
    per_seed: dict[str, list[float]] = {k: [] for k in keys}
    target = RLHFConfig().ppo.kl_target
    for seed in a.seeds:
        summary = run_rlhf(RLHFConfig(out=str(Path(a.out) / f"seed{seed}"), seed=seed))
        for k in keys:
            per_seed[k].append(float(summary[k]))
        print(f"seed {seed}: rm accuracy {summary['rm_accuracy']:.3f}, hidden score SFT {summary['hidden_score_sft']:.3f}"
              f" -> PPO {summary['hidden_score_policy']:.3f}, KL to reference {summary['kl_to_reference']:.2f} "
              f"(target {target:g}), {summary['wall_s']:.0f} s", file=sys.stderr)
    gains = [b - s for s, b in zip(per_seed["hidden_score_sft"], per_seed["hidden_score_policy"])]
    emit({
        "bench": "rlhf_learning", "task": "preference", "preset": RLHFConfig().sft.model, "seeds": a.seeds,
        **{k: per_seed[k] for k in keys}, "kl_target": target,
        "mean_rm_accuracy": statistics.mean(per_seed["rm_accuracy"]),
        "mean_hidden_score_sft": statistics.mean(per_seed["hidden_score_sft"]),
        "mean_hidden_score_policy": statistics.mean(per_seed["hidden_score_policy"]),
        "min_hidden_gain": min(gains), "max_kl_to_reference": max(per_seed["kl_to_reference"]),
        "max_wall_s": max(per_seed["wall_s"]), **machine(),
    })


if __name__ == "__main__":
    main()
