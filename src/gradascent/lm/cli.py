"""``gradascent generate`` and ``gradascent eval``: try a trained language model from the command line.

Both are thin shells over the Python API: ``generate`` is ``lm.load_model`` then ``lm.generate_text``;
``eval`` is ``evaluate_model`` below: ``lm.load_model``, ``tasks.load_task`` and ``algos.grpo.evaluate``
(greedy completions scored by reward functions: with the exact-match reward, the accuracy). After ``make demo``::

    gradascent generate runs/demo/grpo/model --prompt "12+34=" -n 4
    gradascent eval runs/demo/grpo/model --task runs/demo/data/test.jsonl --max-new-tokens 4  # accuracy_after
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gradascent.errors import ConfigError
from gradascent.run import distributed

if TYPE_CHECKING:
    from torch import nn

    from gradascent.rewards import RewardFn

__all__ = ["add_parser", "evaluate_model"]

_SPLITS = ("eval", "train", "all")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a model directory (a run's model/, any local Hugging Face causal LM) or a preset "
                                 "name (random weights)")
    p.add_argument("--device", default=None, help="torch device [default: cpu]")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="compute dtype [default: as saved]")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="let a model directory run its own code (off by default)")


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("generate", parents=[common], help="sample completions of prompts from a language model",
                       description="Sample completions of the given prompts (lm.generate_text) and print them.")
    _model_args(p)
    p.add_argument("--prompt", action="append", default=[], metavar="TEXT", help="a prompt (repeatable)")
    p.add_argument("--prompts-file", metavar="FILE", help="a JSONL file of rows with a 'prompt' (a task file)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N prompts of the file")
    p.add_argument("-n", "--num-samples", type=int, default=1, help="completions per prompt [default: 1]")
    p.add_argument("--max-new-tokens", type=int, default=64, help="[default: 64]")
    p.add_argument("--temperature", type=float, default=1.0, help="[default: 1.0]")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1: off)")
    p.add_argument("--greedy", action="store_true", help="argmax decoding instead of sampling")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws [default: 0]")
    p.add_argument("--json", action="store_true", help="one JSON object per completion instead of text")
    p.set_defaults(func=_generate_cmd)

    p = sub.add_parser("eval", parents=[common], help="score a language model's greedy answers on a task",
                       description="Greedy completions of a task's prompts scored by its reward functions "
                                   "(algos.grpo.evaluate): with the exact-match reward, the accuracy.")
    _model_args(p)
    p.add_argument("--task", required=True, help="a built-in task (arithmetic, preference) or a JSONL task file")
    p.add_argument("--split", choices=_SPLITS, default=None,
                   help="rows to score: a built-in task's held-out 'eval' rows or its 'train' rows (as "
                        "load_task makes them with --seed and its default sizes); a file's 'all' rows in its "
                        "order, or its 'eval'/'train' split as load_task makes it with --seed [default: eval "
                        "for a built-in task, all for a file]")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N rows")
    p.add_argument("--rewards", default=None, metavar="FN[,FN...]",
                   help="reward functions instead of the task's, comma-separated as for grpo --rewards: built-in "
                        "names, regex(PATTERN), module:function or path/to/file.py:function")
    p.add_argument("--max-new-tokens", type=int, default=None, help="[default: the task's budget]")
    p.add_argument("--seed", type=int, default=0, help="data seed of a built-in task / of a file's split")
    p.add_argument("--batch-size", type=int, default=128, help="prompts per generation batch [default: 128]")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(func=_eval_cmd)


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    from gradascent.lm import load_model

    return load_model(args.model, dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ConfigError(f"{name} must be >= 1, got {value}")


def _check_fit(model: nn.Module, tokenizer: Any, prompts: list[str], max_new_tokens: int, what: str,
               names: list[str]) -> None:
    """Every prompt plus ``max_new_tokens`` fits the model's context, or an error naming the first that does
    not by its entry in ``names`` (a file's line, or the --prompt flag)."""
    from gradascent.lm.tokenizers import check_fits_context

    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    context = context if isinstance(context, int) else None
    check_fits_context(tokenizer, prompts, context, max_new_tokens,
                       f"{what} (model context {context}, max_new_tokens {max_new_tokens})", names)


def _seed(name: str, value: int) -> None:
    """Seeds as every config takes them (an integer in [0, 2**32)); a negative one was taken silently here."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise ConfigError(f"{name} must be an integer in [0, 2**32), got {value!r}")


def _quiet_if_json(args: argparse.Namespace) -> None:
    """With --json the output is for a program: no weight-loading progress bar on stderr either."""
    if args.json:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def _generate_cmd(args: argparse.Namespace) -> int:
    import torch

    distributed.refuse_several_processes("generate")
    _quiet_if_json(args)

    from gradascent.lm import generate_text
    from gradascent.tasks.data import read_jsonl_lines

    _positive("--limit", args.limit)
    _seed("--seed", args.seed)
    if not args.temperature > 0:  # the API's own message names its argument greedy=True, not the flag
        raise ConfigError(f"--temperature must be > 0 (use --greedy for argmax decoding), got {args.temperature}")
    if args.greedy and args.num_samples > 1:  # argmax decoding is deterministic: -n copies of one completion
        raise ConfigError(f"--greedy makes one completion per prompt (argmax decoding has no randomness), so "
                          f"-n {args.num_samples} would print it {args.num_samples} times; drop -n, or sample "
                          "without --greedy")
    if args.limit is not None and not args.prompts_file:
        raise ConfigError("--limit applies to the prompts of --prompts-file; none was given")
    prompts = list(args.prompt)
    names = [f"--prompt {i}" for i in range(1, len(prompts) + 1)]
    if args.prompts_file:
        rows, lines = read_jsonl_lines(args.prompts_file, required=("prompt",))
        prompts += [r["prompt"] for r in rows][:args.limit]
        names += [f"{args.prompts_file}:{n}" for n in lines][:args.limit]
    if not prompts:
        raise ConfigError("no prompts: give --prompt TEXT (repeatable) or --prompts-file FILE.jsonl")
    model, tokenizer = _load(args)
    _check_fit(model, tokenizer, prompts, args.max_new_tokens, "generate", names)
    device = next(model.parameters()).device
    gen, texts = generate_text(
        model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, num_samples=args.num_samples,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, greedy=args.greedy,
        generator=torch.Generator(device=device).manual_seed(args.seed))
    lengths, logp, finished = gen.lengths.tolist(), gen.logp.sum(-1).tolist(), gen.finished.tolist()
    for i, prompt in enumerate(prompts):
        if not args.json:
            print(f"prompt {i + 1}: {json.dumps(prompt, ensure_ascii=False)}")
        for j in range(args.num_samples):
            row = i * args.num_samples + j  # the samples of one prompt are contiguous
            if args.json:
                print(json.dumps({"prompt": prompt, "sample": j, "completion": texts[row], "tokens": lengths[row],
                                  "finished": finished[row], "logp": round(logp[row], 4)}, ensure_ascii=False))
            else:
                end = "" if finished[row] else "  [cut at max_new_tokens]"
                print(f"  {j + 1}: {json.dumps(texts[row], ensure_ascii=False)}{end}")
    return 0


def evaluate_model(
    model: str | Path | nn.Module,
    task: str,
    *,
    tokenizer: Any = None,
    split: str | None = None,
    limit: int | None = None,
    rewards: str | Sequence[str | RewardFn] | None = None,
    max_new_tokens: int | None = None,
    seed: int = 0,
    batch_size: int = 128,
    dtype: str | None = None,
    device: str | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """Greedy completions of a task's rows scored by reward functions, ``algos.grpo.evaluate`` on the rows
    ``gradascent eval`` picks; returns what it prints: {'task', 'split', 'rows', 'eval/<reward name>': mean}.

    Args:
        model: a model directory or preset name, loaded with ``lm.load_model(model, tokenizer, dtype=dtype,
            device=device, trust_remote_code=trust_remote_code)``, or a loaded model and its ``tokenizer``.
        task: a built-in task name or a JSONL task file, ``tasks.load_task(task, seed=seed)``.
        split: ``'eval'`` (a built-in task's held-out rows; the default for one) or ``'train'``, as
            ``load_task`` makes them with ``seed``; for a file also ``'all'``, its rows in its own order (the
            default for a file).
        limit: only the first ``limit`` rows.
        rewards: reward functions instead of the task's: ``resolve_reward`` specs or callables, or one string
            of comma-separated specs (a comma inside parentheses belongs to its spec, as for ``grpo --rewards``).
        max_new_tokens: the completion budget [default: the task's].
    """
    from gradascent.algos.grpo import evaluate
    from gradascent.lm import load_model
    from gradascent.rewards import check_columns, resolve_reward
    from gradascent.run.config import split_commas
    from gradascent.tasks import BUILTIN_TASKS, describe_rows, load_task, row_names
    from gradascent.tasks.data import load_rows_lines

    for name, value in (("limit", limit), ("batch_size", batch_size), ("max_new_tokens", max_new_tokens)):
        _positive(name, value)
    _seed("seed", seed)
    loaded = load_task(task, seed=seed)
    builtin = task in BUILTIN_TASKS
    split = split or ("eval" if builtin else "all")
    if split not in _SPLITS:
        raise ConfigError(f"split must be one of {', '.join(_SPLITS)}, got {split!r}")
    if builtin and split == "all":
        raise ConfigError("split 'all' is for a file; a built-in task has 'eval' and 'train' rows")
    if split == "all":  # the file's rows in its own order
        _, all_rows, lines = load_rows_lines(task)
        rows, names = all_rows[:limit], [f"{task}:{n}" for n in lines[:limit]]
    else:
        rows = (loaded.eval if split == "eval" else loaded.train)[:limit]
        names = row_names(loaded, split)[:limit]
    if not rows:
        raise ConfigError(f"task {task!r} has no {split!r} rows to score")
    if isinstance(rewards, str):
        rewards = [r for r in split_commas(rewards) if r != ""]
    if rewards is not None and len(rewards) == 0:  # not the task's own in disguise: say which is meant
        raise ConfigError("rewards is empty: name at least one reward function, or leave it out (None) to score "
                          "with the task's own")
    fns = [resolve_reward(r) for r in rewards] if rewards is not None else list(loaded.reward_fns)
    if not fns:
        raise ConfigError(f"task {task!r} ({describe_rows(loaded)}) has no reward functions of its own; "
                          "give some (--rewards, or rewards= in Python)")
    check_columns(fns, [k for k in rows[0] if k != "prompt"], f"task {task!r} ({split})")
    if isinstance(model, (str, Path)):
        model, tokenizer = load_model(model, tokenizer, dtype=dtype, device=device,
                                      trust_remote_code=trust_remote_code)
    elif tokenizer is None:
        raise ConfigError("evaluate_model of a loaded model needs its tokenizer")
    max_new = max_new_tokens or loaded.max_new_tokens
    _check_fit(model, tokenizer, [str(r["prompt"]) for r in rows], max_new, f"task {task!r} ({split})", names)
    metrics = evaluate(model, tokenizer, rows, fns, max_new, batch_size=batch_size)
    return {"task": task, "split": split, "rows": len(rows), **metrics}


def _eval_cmd(args: argparse.Namespace) -> int:
    distributed.refuse_several_processes("eval")
    _quiet_if_json(args)
    out = evaluate_model(args.model, args.task, split=args.split, limit=args.limit, rewards=args.rewards,
                         max_new_tokens=args.max_new_tokens, seed=args.seed, batch_size=args.batch_size,
                         dtype=args.dtype, device=args.device, trust_remote_code=args.trust_remote_code)
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{out['rows']} prompts of {args.task} ({out['split']}), greedy:")
        for key, value in out.items():
            if key.startswith("eval/"):
                print(f"  {key}: {value:.4f}")
    return 0
