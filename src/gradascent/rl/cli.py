"""``gradascent rl ALGO ...`` (train) and ``gradascent rl eval DIR`` (deterministic evaluation).

A thin shell over ``gradascent.algos.presets.classic_config``, the trainers' ``train`` and
``gradascent.rl.evaluate``.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

from gradascent.errors import ConfigError, GradascentError
from gradascent.run.config import add_config_flags, bool_flag, flag_values, read_yaml


def add_parser(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from gradascent.algos.presets import ALGOS

    rl = subparsers.add_parser("rl", parents=[common], help="classic control: REINFORCE, A2C, PPO on gymnasium",
                               description="Train or evaluate a policy on a gymnasium classic-control task.")
    sub = rl.add_subparsers(dest="rl_command", metavar="ALGO")
    presets = sorted(p.name for p in (resources.files("gradascent") / "presets").iterdir()
                     if p.name.endswith(".yaml"))
    for name, spec in ALGOS.items():
        mine = [f[len(name) + 1:-5] for f in presets if f.startswith(name + "-") and
                not (name == "ppo" and f.startswith("ppo-penalty-"))]
        p = sub.add_parser(name, parents=[common], help=f"train {name}",
                           description=f"Train {name}. Without --config, the preset for --env is applied when there "
                                       f"is one ({', '.join(mine) or 'none'}; docs/classic.md): its values replace "
                                       "the defaults listed below, and flags replace both.")
        p.add_argument("--out", metavar="DIR", help="run directory [default: runs/ALGO-ENV-seedS]")
        p.add_argument("--config", metavar="FILE.yaml", help="YAML file of config fields (replaces the preset)")
        p.add_argument("--resume", nargs="?", const=True, default=False, type=bool_flag, metavar="BOOL",
                       help="continue the run in --out from its newest complete checkpoint")
        p.add_argument("--progress", nargs="?", const=True, default=None, type=bool_flag, metavar="BOOL",
                       help="show a progress bar [default: only on a terminal]")
        p.add_argument("--no-progress", action="store_true", help="no progress bar (--progress false)")
        # the variant's own fields (ppo-penalty's loss) are set by the command: parsed, so that the config's
        # check names a value given anyway, but not offered in the help with the other variant's default
        add_config_flags(p, spec.config, hidden=frozenset(spec.variant))
        p.set_defaults(func=_train, algo=name)
    ev = sub.add_parser("eval", parents=[common], help="evaluate a saved policy deterministically",
                        description="Play episodes with the saved policy's deterministic actions and print "
                                    "the mean and std of the return.")
    ev.add_argument("dir", metavar="DIR", help="a finished run directory (holding policy.safetensors)")
    ev.add_argument("--episodes", type=int, default=None,
                    help="episodes to play [default: the run's eval_episodes, else 10]")
    ev.add_argument("--seed", type=int, default=None,
                    help="seed of the evaluation environments (episode i: seed + i) [default: the seed of the "
                         "run's own evaluations, which reproduces its final eval return; else 0]")
    ev.set_defaults(func=_eval)
    rl.set_defaults(func=lambda args: rl.print_help() or 2)


def _check_trainer(algo: str, out: Path) -> None:
    """Refuse to resume the run in ``out`` with another algorithm than the one that made it (run.json)."""
    import json

    from gradascent.algos.presets import ALGOS

    try:
        made_by = json.loads((out / "run.json").read_text(encoding="utf-8"))["config_class"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no record to compare with: the config check that follows still applies
    names = [n for n, a in ALGOS.items() if f"{a.config.__module__}:{a.config.__name__}" == made_by]
    if len(names) > 1:  # ppo and ppo-penalty share a config class: the saved variant fields tell them apart
        try:
            saved = read_yaml(out / "config.yaml")
        except ConfigError:
            saved = {}
        names = [n for n in names if all(saved.get(k) == v for k, v in ALGOS[n].variant.items())] or names
    if algo not in names:
        raise ConfigError(f"--resume: {out} is a run of {' / '.join(names) or made_by}, not {algo}; continue it with "
                          f"`gradascent resume {out}`")


def _train(args: argparse.Namespace) -> int:
    from gradascent.algos.classic import TrainingInterrupted
    from gradascent.algos.presets import classic_config, get_algo

    flags = flag_values(args)
    if args.resume:
        if not args.out:
            raise ConfigError("--resume needs --out DIR, the run to continue")
        if args.config:
            raise ConfigError("--resume continues the run with its own config (DIR/config.yaml); leave out --config")
        saved = Path(args.out) / "config.yaml"
        if not saved.exists():
            raise ConfigError(f"--resume: {args.out} holds no run (no config.yaml)")
        _check_trainer(args.algo, Path(args.out))
        cfg = classic_config(args.algo, path=saved, flag_overrides=flags)
    else:
        cfg = classic_config(args.algo, path=args.config, flag_overrides=flags)
    try:
        summary = get_algo(args.algo).module.train(cfg, args.out, resume=args.resume,
                                                   progress=False if args.no_progress else args.progress)
    except TrainingInterrupted as exc:  # on stderr with the command's name, as every trainer's stop message
        print(f"gradascent rl {args.algo}: {exc}", file=sys.stderr, flush=True)
        return 128 + exc.signum
    out = args.out or f"runs/{args.algo}-{cfg.env}-seed{cfg.seed}"
    print(f"{args.algo} {cfg.env} seed {cfg.seed}: eval return {summary['eval_return_mean']:.2f} +/- "
          f"{summary['eval_return_std']:.2f} ({summary['eval_episodes']} episodes, deterministic) after "
          f"{summary['env_steps']} env steps, {summary['wall_seconds']:.1f} s; run directory {out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from gradascent.rl.saved import evaluate

    if not Path(args.dir).exists():
        raise GradascentError(f"{args.dir} does not exist")
    result = evaluate(args.dir, episodes=args.episodes, seed=args.seed)
    print(f"mean return {result['eval_return_mean']:.2f}, std {result['eval_return_std']:.2f} over "
          f"{result['episodes']} episodes (deterministic, seed {result['seed']})")
    return 0
