"""RLHF end to end on one config: SFT -> reward model -> PPO (Ouyang et al. 2022, InstructGPT, fig. 2).

    gradascent rlhf --config rlhf.yaml           # or the built-in default: the preference task

``RLHFConfig`` holds the three stages' configs as sections ``sft``, ``rm`` and ``ppo``; the chain fills in
what connects them, so those fields are not set by hand:

    sft.out = OUT/sft        sft.task = task         sft.seed = seed
    rm.out  = OUT/rm         rm.data  = task         rm.seed  = seed     rm.model = OUT/sft/model
    ppo.out = OUT/ppo        ppo.prompts = task      ppo.seed = seed     ppo.policy = OUT/sft/model
                                                                        ppo.reward_model = OUT/rm/model
    and resume = true for every stage.

Each stage writes its own run directory under OUT; OUT itself holds config.yaml, metrics.jsonl (one row
per finished stage), summary.json and checkpoints/ (empty: the stages checkpoint themselves). Running the
same command again skips the stages that finished with the same config and resumes the one that was
interrupted from its newest checkpoint, wherever OUT is now (moved, or named by another path). Every
stage's data is checked against the model before the first stage starts (``check_inputs``).

Under ``torchrun --nproc-per-node N`` every stage trains data-parallel (each stage's module says how) and
rank 0 alone writes; the process group is joined once, with the device of the SFT stage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradascent.algos.ppo_rlhf import (
    PPORLHFConfig,
    check_batch_split,
    check_reference_tokenizer,
    load_prompt_set,
    train_ppo_rlhf,
)
from gradascent.algos.ppo_rlhf import check_lengths as check_ppo_prompts
from gradascent.algos.reward_model import RewardModelConfig, train_reward_model
from gradascent.algos.reward_model import check_lengths as check_pair_lengths
from gradascent.algos.rlhf_data import preference_data
from gradascent.algos.sft import SFTConfig, check_examples, sft_task, train_sft
from gradascent.errors import ConfigError
from gradascent.lm.models import tokenizer_and_context
from gradascent.run import distributed
from gradascent.run.command import finish
from gradascent.run.config import add_config_flags, check_fields, flag_values, load_config, read_yaml, require, save_yaml
from gradascent.run.config import check_config, describe_changes, renamed, to_dict
from gradascent.run.rundir import RunDir, check_run_kind, require_path

# Fields of each section that the chain sets (section field -> where its value comes from).
CHAIN_FIELDS: dict[str, tuple[str, ...]] = {
    "sft": ("out", "task", "seed", "resume"),
    "rm": ("out", "data", "seed", "model", "resume"),
    "ppo": ("out", "prompts", "seed", "policy", "reward_model", "resume"),
}

# Of those, the paths under ``out``: they change when the chain's directory is moved or spelt another way
# (relative, absolute), while the stages in it stay the same, so they are not compared on a rerun; the
# stages' config.yaml files are brought up to date instead (``_follow_move``).
PATH_FIELDS: dict[str, tuple[str, ...]] = {"sft": ("out",), "rm": ("out", "model"),
                                           "ppo": ("out", "policy", "reward_model")}


@dataclass(frozen=True)
class RLHFConfig:
    out: str = "runs/rlhf"
    """Run directory of the chain; the stages write OUT/sft, OUT/rm and OUT/ppo."""
    task: str = "preference"
    """Data of every stage: a built-in task ('preference': pairs from a hidden scoring rule that also judges
    the final policy) or a JSONL file of preference rows {prompt, chosen, rejected} (SFT trains on chosen)."""
    seed: int = 0
    """Seed of every stage."""
    sft: SFTConfig = SFTConfig(model="qwen2-1m", n_train=2000, n_eval=100, steps=300, batch_size=32, lr=3e-3,
                               warmup_steps=20, eval_every=0, eval_generate=64, save_every=100, log_every=20)
    """Stage 1, supervised fine-tuning on the chosen completions (`gradascent sft`)."""
    rm: RewardModelConfig = RewardModelConfig(train_pairs=6000, eval_pairs=256, epochs=1, batch_size=32, lr=1e-3,
                                              save_every=50)
    """Stage 2, the reward model on the preference pairs (`gradascent rm`)."""
    ppo: PPORLHFConfig = PPORLHFConfig()
    """Stage 3, PPO against the reward model with a KL penalty to the SFT model (`gradascent ppo`)."""

    def __post_init__(self) -> None:
        check_fields(self)
        require(bool(self.out), "out", self.out, "a directory")
        defaults = {"sft": SFTConfig(), "rm": RewardModelConfig(), "ppo": PPORLHFConfig()}
        for section, fields in CHAIN_FIELDS.items():
            sub, default = getattr(self, section), defaults[section]
            for f in fields:
                if getattr(sub, f) != getattr(default, f):
                    raise ConfigError(f"config key '{section}.{f}' is set by the rlhf chain (from out, task and "
                                      f"seed, and the stage before); leave it out of the config")


def stage_configs(cfg: RLHFConfig) -> tuple[SFTConfig, RewardModelConfig, PPORLHFConfig]:
    """The three stages' configs with the fields that connect them filled in."""
    out = Path(cfg.out)
    sft_model = str(out / "sft" / "model")
    sft = dataclasses.replace(cfg.sft, out=str(out / "sft"), task=cfg.task, seed=cfg.seed, resume=True)
    rm = dataclasses.replace(cfg.rm, out=str(out / "rm"), data=cfg.task, seed=cfg.seed, model=sft_model, resume=True)
    ppo = dataclasses.replace(cfg.ppo, out=str(out / "ppo"), prompts=cfg.task, seed=cfg.seed, policy=sft_model,
                              reward_model=str(out / "rm" / "model"), resume=True)
    return sft, rm, ppo


def check_inputs(cfg: RLHFConfig) -> None:
    """Every stage's data checked against the model it will train, before the first stage starts, so that bad
    input for a later stage (prompts too long for the context, pairs longer than ``rm.max_length``, a
    reference with another tokenizer) is an error before any training, not after it.

    The SFT model keeps the tokenizer and context of the model it starts from, so those of ``sft.model`` (or
    of the SFT stage's model, once it exists) hold for every stage; no weights are loaded."""
    require_path(cfg.out, "run directory")
    check_run_kind(cfg.out, cfg)  # a directory holding another trainer's run is not taken over
    sft_cfg, rm_cfg, ppo_cfg = stage_configs(cfg)
    check_batch_split(ppo_cfg, distributed.info().world_size)  # PPO's batches split over the processes
    sft_model = rm_cfg.model if (Path(rm_cfg.model) / "config.json").is_file() else cfg.sft.model
    tokenizer, context = tokenizer_and_context(sft_model)
    check_examples(sft_cfg, sft_task(sft_cfg), tokenizer, context)
    train, held_out = preference_data(cfg.task, rm_cfg.train_pairs, rm_cfg.eval_pairs, cfg.seed, rm_cfg.eval_fraction)
    check_pair_lengths(tokenizer, train + held_out, rm_cfg.max_length)
    check_ppo_prompts(ppo_cfg, load_prompt_set(cfg.task, ppo_cfg.eval_prompts, cfg.seed), tokenizer, context,
                      cfg.task)
    out = Path(cfg.out).resolve()
    reference = Path(ppo_cfg.reference).resolve() if ppo_cfg.reference is not None else None
    if reference is not None and (reference.exists() or out not in reference.parents):  # not one a stage makes
        check_reference_tokenizer(ppo_cfg.reference, tokenizer_and_context(ppo_cfg.reference)[0], sft_model,
                                  tokenizer)


def _finished(stage_cfg: Any, model_dir: str) -> dict[str, Any] | None:
    """The summary of a stage that already finished with this very config, else None. A finished stage with
    another config is an error: its outputs feed the next stages."""
    out = Path(stage_cfg.out)
    summary_path, config_path = out / "summary.json", out / "config.yaml"
    if not (summary_path.is_file() and config_path.is_file() and Path(model_dir).is_dir()):
        return None
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    if "stopped" in summary or "stopped_by" in summary:
        return None
    return summary


def _check_same_config(section: str, stage_cfg: Any) -> None:
    """A ConfigError naming the keys in which a finished stage run in ``stage_cfg.out`` differs from this one
    (apart from ``PATH_FIELDS``)."""
    out = Path(stage_cfg.out)
    if not ((out / "summary.json").is_file() and (out / "config.yaml").is_file()):
        return
    saved, now = renamed(read_yaml(out / "config.yaml")), to_dict(stage_cfg)
    shown = {"progress"}  # how a run shows itself, not what it trains
    changed = sorted(k for k in set(saved) | set(now)
                     if k not in PATH_FIELDS[section] and k not in shown and saved.get(k) != now.get(k))
    if changed:
        raise ConfigError(f"{out} holds a finished stage run with another config ({describe_changes(changed, saved, now)}); "
                          "choose another 'out' for the chain (or remove that directory)")


def _follow_move(section: str, stage_cfg: Any) -> None:
    """Rewrite the ``PATH_FIELDS`` of a stage's saved config.yaml to where the chain is now, so that the stage,
    resuming, compares like with like (and its config.yaml names the directories it reads)."""
    path = Path(stage_cfg.out) / "config.yaml"
    if not path.is_file():
        return
    saved, now = renamed(read_yaml(path)), to_dict(stage_cfg)
    if any(saved.get(f) != now[f] for f in PATH_FIELDS[section]):
        save_yaml({**saved, **{f: now[f] for f in PATH_FIELDS[section]}}, path)


def run_rlhf(cfg: RLHFConfig) -> dict[str, Any]:
    """SFT -> reward model -> PPO; returns the summary (also in ``out/summary.json``)."""
    check_config(cfg, RLHFConfig, "run_rlhf")
    t0 = time.perf_counter()
    main = distributed.init(cfg.sft.device).is_main
    sft_cfg, rm_cfg, ppo_cfg = stage_configs(cfg)
    # Before anything is written: every stage's data fits its model, and no finished stage was run with
    # another config (its outputs feed the next stages).
    check_inputs(cfg)
    stages = {"sft": sft_cfg, "rm": rm_cfg, "ppo": ppo_cfg}
    for section, stage_cfg in stages.items():
        _check_same_config(section, stage_cfg)
    run = RunDir(cfg.out) if main else None  # rank 0 writes
    if run is not None:
        # without the keys the chain sets (they hold the stage defaults, which no stage used: the stages'
        # own config.yaml files have the values they ran with)
        recorded = to_dict(cfg)
        for section, fields in CHAIN_FIELDS.items():
            recorded[section] = {k: v for k, v in recorded[section].items() if k not in fields}
        run.write_config(cfg, recorded)
        for section, stage_cfg in stages.items():
            _follow_move(section, stage_cfg)
        # one row per stage, rewritten on every invocation; a stage finished before keeps its row (its wall_s)
        before = {row.get("stage"): row for row in run.read_metrics()} if run.metrics_path.exists() else {}
        if run.metrics_path.exists():
            run.metrics_path.unlink()
    else:
        before = {}

    def log(step: int, stage: str, t: float, summary: dict[str, Any], reused: bool) -> None:
        if run is None:
            return
        row = before.get(stage) if reused else None
        row = ({k: v for k, v in row.items() if k != "step"} if row is not None else
               {"stage": stage, "wall_s": time.perf_counter() - t, **_numbers(summary)})
        run.log(step, row)

    t = time.perf_counter()
    done = _finished(sft_cfg, rm_cfg.model)
    sft = done or train_sft(sft_cfg)
    if "stopped_by" in sft:
        return _stopped(run, "sft", f"after step {sft['steps']}", sft["stopped_by"])
    log(1, "sft", t, sft, reused=done is not None)

    t = time.perf_counter()
    done = _finished(rm_cfg, ppo_cfg.reward_model)
    rm = done or train_reward_model(rm_cfg)
    if "stopped" in rm:
        return _stopped(run, "rm", f"after step {rm['steps_done']}", rm["stopped_by"])
    log(2, "rm", t, rm, reused=done is not None)

    t = time.perf_counter()
    done = _finished(ppo_cfg, str(Path(ppo_cfg.out) / "policy"))
    ppo = done or train_ppo_rlhf(ppo_cfg)
    if "stopped" in ppo:
        return _stopped(run, "ppo", f"after update {ppo['updates_done']}", ppo["stopped_by"])
    log(3, "ppo", t, ppo, reused=done is not None)

    summary = {
        "rm_accuracy": rm["rm_accuracy"],
        "hidden_score_sft": ppo["hidden_score_sft"],
        "hidden_score_policy": ppo["hidden_score_policy"],
        "kl_to_reference": ppo["kl_to_reference"],
        "kl_target": ppo_cfg.kl_target,
        "rm_score_sft": ppo["rm_score_sft"],
        "rm_score_policy": ppo["rm_score_policy"],
        "sft_eval_loss": sft.get("eval/loss"),
        "policy_dir": str(Path(ppo_cfg.out) / "policy"),
        "reward_model_dir": rm_cfg.out + "/model",
        "sft_model_dir": rm_cfg.model,
        "wall_s": time.perf_counter() - t0,  # of this invocation; the stages' own: metrics.jsonl
    }
    if run is not None:
        summary["train_wall_s"] = sum(float(row.get("wall_s", 0.0)) for row in run.read_metrics())
    if run is not None:
        run.write_summary(summary)
        run.close()
    return summary


def _numbers(summary: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k != "wall_s"}


def _stopped(run: RunDir | None, stage: str, when: str, by: str) -> dict[str, Any]:
    """The chain's summary when a signal stopped ``stage``: the chain resumes it when run again."""
    if run is not None:
        run.close()
    return {"stopped": f"{stage} stage: stopped by {by} {when}; run the same command again to resume",
            "stopped_by": by}


# --- command line --------------------------------------------------------------------------------------


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("rlhf", parents=[common], help="SFT -> reward model -> PPO on one config",
                       description="RLHF end to end: supervised fine-tuning, a reward model on preference pairs, "
                                   "then PPO against it with a KL penalty to the SFT model. Sections sft, rm, ppo "
                                   "of the config (flags --sft.FIELD, --rm.FIELD, --ppo.FIELD) configure the stages.")
    p.add_argument("--config", metavar="FILE.yaml", default=None, help="YAML file of RLHFConfig fields")
    add_config_flags(p, RLHFConfig,  # the fields the chain connects are refused: not offered in the help
                     hidden=frozenset(f"{stage}.{f}" for stage, fields in CHAIN_FIELDS.items() for f in fields))
    p.set_defaults(func=_cmd)


RESUMES_FROM_STAGES = True  # `gradascent resume OUT` needs no checkpoint in OUT: the stages keep their own


def train(cfg: RLHFConfig, resume: bool = False) -> dict[str, Any]:
    """The chain as `gradascent resume` calls it (the chain always resumes what it finds in ``out``)."""
    return run_rlhf(cfg)


def check_no_chain_keys(data: dict[str, Any], where: str) -> None:
    """A ConfigError for a key the chain sets itself (CHAIN_FIELDS) given in ``data`` (a YAML file's mapping, or
    the flags as dotted keys), even at its default value, which RLHFConfig alone cannot tell from unset."""
    for section, fields in CHAIN_FIELDS.items():
        given = data.get(section) if isinstance(data.get(section), dict) else {}
        for f in fields:
            if f in given or f"{section}.{f}" in data:
                raise ConfigError(f"config key '{section}.{f}' ({where}) is set by the rlhf chain (from out, task "
                                  "and seed, and the stage before); leave it out of the config")


def _cmd(args: argparse.Namespace) -> int:
    if args.config is not None:
        check_no_chain_keys(read_yaml(args.config), str(args.config))
    check_no_chain_keys({k.replace("-", "_"): v for k, v in flag_values(args).items()}, "a flag")
    cfg = load_config(RLHFConfig, args.config, flag_overrides=flag_values(args))
    return finish("rlhf", run_rlhf(cfg), lambda s: (
        f"rlhf: reward-model accuracy {s['rm_accuracy']:.3f}; {_scores(s)}; "
        f"KL to reference {s['kl_to_reference']:.2f} nats (target {s['kl_target']:g}); "
        f"{s['wall_s']:.0f} s" + (f" ({s['train_wall_s']:.0f} s of training in all)"
                                  if s.get("train_wall_s", s["wall_s"]) > s["wall_s"] + 1 else "")
        + f"; results in {cfg.out}"))


def _scores(s: dict[str, Any]) -> str:
    """The hidden score of greedy completions when the task has one (the built-in preference task's rule),
    else the reward model's score of them (a JSONL task of pairs has no ground truth to judge by)."""
    if s.get("hidden_score_sft") is not None and s.get("hidden_score_policy") is not None:
        return (f"hidden score of greedy completions SFT {s['hidden_score_sft']:.3f} -> policy "
                f"{s['hidden_score_policy']:.3f}")
    if s.get("rm_score_sft") is not None and s.get("rm_score_policy") is not None:
        return (f"reward-model score of greedy completions SFT {s['rm_score_sft']:.3f} -> policy "
                f"{s['rm_score_policy']:.3f} (the task has no hidden score)")
    return "no held-out scores (eval_prompts 0)"
