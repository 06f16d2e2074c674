"""PPO-RLHF step time, gradascent against TRL's PPO trainer, same model, same batch, one process, offline.

    HF_HUB_OFFLINE=1 python bench/ppo_vs_trl.py [--preset qwen2-micro] [--updates 6]

Both trainers get the same randomly initialised policy (saved to a temporary directory and loaded back),
reference, reward model and critic of the same size, the same prompts of the built-in preference task, and
the same PPO shape: `batch` completions of at most `response_length` tokens per update, `epochs` passes of
`batch / minibatch` minibatches, fixed KL coefficient, temperature 1. One "step" is one whole PPO update
(sample -> score -> epochs of minibatches). The first update of each is a warm-up; the figure is the median
wall time of the others (ours: the trainer's per-update `wall_s`, without the final evaluation; TRL: the
interval between two `on_step_end` callbacks).

TRL's trainer is `trl.experimental.ppo.PPOTrainer`, which TRL ships up to version 1.12 (later versions
removed PPO). When the installed TRL has none, install 1.12 beside it without touching its dependencies,

    pip install --no-deps --target .cache/trl-ppo trl==1.12.0
    PYTHONPATH=.cache/trl-ppo HF_HUB_OFFLINE=1 python bench/ppo_vs_trl.py

and the script says so (and why) when it cannot find it. The last line is one JSON object; `speedup` is
TRL's median s/update over ours.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from _common import emit, machine, median  # noqa: E402


def find_trl_ppo() -> tuple[object | None, str]:
    """(module trl.experimental.ppo, version) or (None, why not)."""
    try:
        import trl
    except ImportError:
        return None, "TRL is not installed (pip install 'gradascent[bench]')"
    try:
        import trl.experimental.ppo as ppo
    except ImportError as exc:
        return None, (f"TRL {trl.__version__} has no trl.experimental.ppo ({exc}); TRL removed its PPO trainer after "
                      "1.12: pip install --no-deps --target .cache/trl-ppo trl==1.12.0 and run with "
                      "PYTHONPATH=.cache/trl-ppo")
    return ppo, trl.__version__


def prepare(tmp: Path, preset: str) -> tuple[Path, Path]:
    """A policy and a reward model of the same size, saved as the trainers read them."""
    from gradascent.lm import RewardModel, load_model, save_model

    model, tok = load_model(preset, seed=0)
    save_model(model, tok, tmp / "policy")
    rm_backbone, _ = load_model(preset, seed=1)
    RewardModel(rm_backbone).save_pretrained(tmp / "rm", tok)
    return tmp / "policy", tmp / "rm"


def run_ours(policy: Path, rm: Path, out: Path, a: argparse.Namespace) -> list[float]:
    from gradascent.algos.ppo_rlhf import PPORLHFConfig, train_ppo_rlhf

    cfg = PPORLHFConfig(
        policy=str(policy), reward_model=str(rm), value_init="reward_model", out=str(out), updates=a.updates,
        batch_size=a.batch, minibatch_size=a.minibatch, epochs=a.epochs, max_new_tokens=a.response_length,
        temperature=1.0, lr=1e-4, kl_coef=0.05, kl_control="fixed", eval_prompts=8, eval_every=0,
        save_every=0, resume=False,
    )
    train_ppo_rlhf(cfg)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    per_update = [r["wall_s"] for r in rows if r["step"] >= 1]
    return per_update[1:-1]  # drop the warm-up and the last update (it holds the final evaluation)


def run_trl(ppo: object, policy: Path, rm: Path, out: Path, prompts: list[str], a: argparse.Namespace) -> list[float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback

    from gradascent.lm import load_tokenizer

    tok = load_tokenizer(policy)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(policy))
    ref = AutoModelForCausalLM.from_pretrained(str(policy))
    reward = AutoModelForSequenceClassification.from_pretrained(str(rm), num_labels=1)
    value = AutoModelForSequenceClassification.from_pretrained(str(rm), num_labels=1)
    for m in (model, ref, reward, value):
        m.config.pad_token_id = tok.pad_token_id
    n = a.batch * a.updates
    data = Dataset.from_dict({"input_ids": [tok(p, add_special_tokens=False)["input_ids"] for p in prompts[:n]]})
    args = ppo.PPOConfig(  # type: ignore[attr-defined]
        # TRL: batch = per_device_train_batch_size * gradient_accumulation_steps, split in num_mini_batches
        # minibatches of one optimizer step each: 16 * 2 = 32 completions, 2 minibatches of 16, as ours.
        output_dir=str(out), per_device_train_batch_size=a.minibatch, gradient_accumulation_steps=a.batch // a.minibatch,
        num_mini_batches=a.batch // a.minibatch, num_ppo_epochs=a.epochs, total_episodes=n,
        local_rollout_forward_batch_size=a.batch, response_length=a.response_length, temperature=1.0,
        stop_token="eos", kl_coef=0.05, learning_rate=1e-4, num_sample_generations=0, report_to=[],
        save_strategy="no", logging_steps=10_000, use_cpu=True, bf16=False, seed=0, dataloader_num_workers=0,
    )
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *args: object, **kwargs: object) -> None:
            stamps.append(time.perf_counter())

        def on_step_end(self, *args: object, **kwargs: object) -> None:
            stamps.append(time.perf_counter())

    trainer = ppo.PPOTrainer(  # type: ignore[attr-defined]
        args=args, processing_class=tok, model=model, ref_model=ref, reward_model=reward, value_model=value,
        train_dataset=data, callbacks=[Clock()],
    )
    trainer.train()
    per_update = [b - a_ for a_, b in zip(stamps, stamps[1:])]
    return per_update[1:]  # drop the warm-up


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="qwen2-micro", help="model preset of policy, reference, reward model and critic")
    p.add_argument("--updates", type=int, default=6, help="PPO updates per trainer (the first is a warm-up)")
    p.add_argument("--batch", type=int, default=32, help="completions per update")
    p.add_argument("--minibatch", type=int, default=16, help="completions per gradient step")
    p.add_argument("--epochs", type=int, default=4, help="passes over each batch")
    p.add_argument("--response-length", type=int, default=32, help="the most tokens per completion")
    a = p.parse_args()

    from gradascent.tasks import load_task

    prompts = [r["prompt"] for r in load_task("preference", n_train=a.batch * a.updates, n_eval=8).train]
    figures: dict[str, object] = {"bench": "ppo_vs_trl", "preset": a.preset, "batch": a.batch, "minibatch": a.minibatch,
                                  "epochs": a.epochs, "response_length": a.response_length, "updates": a.updates,
                                  **machine()}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        policy, rm = prepare(tmp, a.preset)
        ours = run_ours(policy, rm, tmp / "ours", a)
        figures["ours_s_per_update"] = median(ours)
        print(f"gradascent: median {median(ours):.3f} s/update over {len(ours)} updates", file=sys.stderr)
        ppo, version = find_trl_ppo()
        figures["trl_version"] = version if ppo is not None else None
        if ppo is None:
            print(f"TRL's PPO trainer cannot run here: {version}", file=sys.stderr)
            figures.update({"trl_s_per_update": None, "speedup": None, "trl_missing": version})
        else:
            trl_times = run_trl(ppo, policy, rm, tmp / "trl", prompts, a)
            figures["trl_s_per_update"] = median(trl_times)
            figures["speedup"] = median(trl_times) / median(ours)
            print(f"TRL {version}: median {median(trl_times):.3f} s/update over {len(trl_times)} updates; "
                  f"ratio TRL / ours = {figures['speedup']:.2f}", file=sys.stderr)
    emit(figures)


if __name__ == "__main__":
    main()
