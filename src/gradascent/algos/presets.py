"""Classic-control algorithms by name, and their per-environment presets.

A preset is a YAML file ``presets/<algo>-<env>.yaml`` in the package: the settings we tuned for that pair
(see docs/classic.md and BENCHMARKS.md). The command line applies the preset of (ALGO, --env) when no
``--config`` file is given; ``classic_config`` does the same from Python.

Resolution order, each layer overriding the previous one: the dataclass defaults < the algorithm's variant
(``ppo-penalty`` is PPO with ``loss: kl_penalty``) < the preset, or the ``--config`` file when one is given <
the overrides (``--field`` flags).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import Any

from gradascent.algos import a2c, ppo, reinforce
from gradascent.algos.classic import ClassicConfig
from gradascent.errors import ConfigError
from gradascent.run.config import from_dict, read_yaml, replace


@dataclass(frozen=True)
class ClassicAlgo:
    name: str
    module: ModuleType  # exposes train(cfg, out, resume=..., progress=...)
    config: type[ClassicConfig]
    variant: dict[str, Any]  # fields that make this algorithm out of its trainer's config


ALGOS: dict[str, ClassicAlgo] = {
    "reinforce": ClassicAlgo("reinforce", reinforce, reinforce.ReinforceConfig, {}),
    "a2c": ClassicAlgo("a2c", a2c, a2c.A2CConfig, {}),
    "ppo": ClassicAlgo("ppo", ppo, ppo.PPOConfig, {"loss": "clip"}),
    "ppo-penalty": ClassicAlgo("ppo-penalty", ppo, ppo.PPOConfig, {"loss": "kl_penalty"}),
}


def get_algo(name: str) -> ClassicAlgo:
    if name not in ALGOS:
        raise ConfigError(f"unknown algorithm {name!r}; expected one of {', '.join(ALGOS)}")
    return ALGOS[name]


def preset_path(algo: str, env: str) -> Path | None:
    """The packaged preset file for (algo, env), or None."""
    path = resources.files("gradascent") / "presets" / f"{algo}-{env}.yaml"
    return Path(str(path)) if path.is_file() else None


def classic_config(algo: str, env: str | None = None, path: str | Path | None = None,
                   overrides: dict[str, Any] | None = None,
                   flag_overrides: dict[str, str] | None = None) -> ClassicConfig:
    """The config of ``algo`` for ``env``: defaults < variant < preset (or the YAML file ``path``) < overrides.

    ``overrides`` are typed values (Python), ``flag_overrides`` strings (command-line flags); either may
    set ``env`` as well.
    """
    spec = get_algo(algo)
    data: dict[str, Any] = dict(spec.variant)
    file_data = read_yaml(path) if path is not None else {}
    given_env = ({**(overrides or {}), **(flag_overrides or {})}.get("env") or env or file_data.get("env")
                 or spec.config.env)
    if path is None:
        preset = preset_path(algo, str(given_env))
        file_data = read_yaml(preset) if preset is not None else {}
    data.update(file_data)
    if env is not None:
        data["env"] = env
    cfg = from_dict(spec.config, data)
    for values, from_string in ((overrides or {}, False), (flag_overrides or {}, True)):
        if values:
            cfg = replace(cfg, values, from_string=from_string)
    for key, value in spec.variant.items():
        if getattr(cfg, key) != value:
            raise ConfigError(f"config key '{key}': {getattr(cfg, key)!r} is not allowed for {algo}; "
                              f"expected {value!r}")
    return cfg
