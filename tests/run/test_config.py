"""Config loading: field docs from the source, strict keys and types, ranges, flags."""

import argparse
from dataclasses import dataclass
from typing import Literal

import pytest
import yaml

from gradascent.errors import ConfigError
from gradascent.run.config import add_config_flags, field_docs, flag_values, from_dict, load_config, read_yaml, require


@dataclass(frozen=True)
class Inner:
    lr: float = 1e-3
    """Adam learning rate."""


@dataclass(frozen=True)
class Cfg:
    lr: float = 3e-4
    """Learning rate of the policy."""
    agg: Literal["token_mean", "seq_mean_token_mean"] = "token_mean"
    """How token losses are reduced."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden layer sizes."""
    target_kl: float | None = None
    """Early-stop KL, or none."""
    anneal: bool = True
    """Anneal the learning rate."""
    inner: Inner = Inner()
    """A nested section."""

    def __post_init__(self):
        require(self.lr > 0, "lr", self.lr, "a float > 0")


def test_field_docs_come_from_the_source():
    docs = field_docs(Cfg)
    assert docs["lr"] == "Learning rate of the policy."
    assert docs["hidden"] == "Hidden layer sizes."
    assert set(docs) == {"lr", "agg", "hidden", "target_kl", "anneal", "inner"}


def test_yaml_then_overrides_then_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 1e-2\nhidden: [8]\ninner:\n  lr: 0.5\n")  # YAML 1.1 reads 1e-2 as a string
    cfg = load_config(Cfg, f, overrides={"agg": "seq_mean_token_mean"},
                      flag_overrides={"target_kl": "0.02", "anneal": "false", "inner.lr": "0.25"})
    assert cfg == Cfg(lr=0.01, agg="seq_mean_token_mean", hidden=(8,), target_kl=0.02, anneal=False,
                      inner=Inner(lr=0.25))


@pytest.mark.parametrize(
    "data, message",
    [
        ({"lrr": 1.0}, "unknown config key 'lrr' for Cfg; did you mean 'lr'?"),
        ({"lr": -1.0}, "config key 'lr': -1.0 is not allowed; expected a float > 0"),
        ({"lr": "fast"}, "config key 'lr': 'fast' is not allowed; expected float"),
        ({"agg": "token_man"}, "expected one of 'token_mean', 'seq_mean_token_mean' (did you mean 'token_mean'?)"),
        ({"hidden": "wide"}, "config key 'hidden': 'wide' is not allowed; expected a list of int"),
        ({"anneal": "maybe"}, "config key 'anneal': 'maybe' is not allowed; expected bool"),
        ({"inner": {"lf": 1}}, "unknown config key 'inner.lf' for Inner; did you mean 'inner.lr'?"),
    ],
)
def test_bad_values_name_the_key_and_what_is_allowed(data, message):
    with pytest.raises(ConfigError) as exc:
        from_dict(Cfg, data)
    assert message in str(exc.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("lr: [1, 2\n", "is not valid YAML at line"),
        ("- 1\n- 2\n", "must hold a mapping"),
        # a key given twice: plain YAML keeps the last one silently, which hides a slip in a long config
        ("lr: 0.1\nsteps: 2\nlr: 0.2\n", "at line 3, column 1: key 'lr' appears twice in one mapping"),
        ("ppo:\n  lr: 0.1\n  lr: 0.2\n", "at line 3, column 3: key 'lr' appears twice"),
    ],
)
def test_bad_yaml_files(tmp_path, text, message):
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(Cfg, f)


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    # `<<: *anchor` merges a mapping, whose keys the mapping may then override: not a key given twice
    f = tmp_path / "c.yaml"
    f.write_text("base: &b {lr: 0.1, steps: 2}\nsft:\n  <<: *b\n  lr: 0.2\n")
    assert read_yaml(f)["sft"] == {"lr": 0.2, "steps": 2}


def test_missing_and_binary_config_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Cfg, tmp_path / "nope.yaml")
    f = tmp_path / "b.yaml"
    f.write_bytes(b"\xff\xfe\x00\x81binary")
    with pytest.raises(ConfigError, match="cannot be read as text"):
        load_config(Cfg, f)


def test_flags_carry_the_docs_and_only_given_values_come_back():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, Cfg)
    help_text = parser.format_help()
    assert "--target-kl" in help_text and "Early-stop KL, or none." in help_text
    assert "--inner.lr" in help_text
    args = parser.parse_args(["--lr", "0.1", "--inner.lr", "2"])
    assert flag_values(args) == {"lr": "0.1", "inner.lr": "2"}


def test_bool_flags_stand_alone_or_take_a_value():
    parser = argparse.ArgumentParser()
    add_config_flags(parser, Cfg)
    assert flag_values(parser.parse_args(["--anneal"])) == {"anneal": "true"}
    assert load_config(Cfg, flag_overrides=flag_values(parser.parse_args(["--anneal", "false"]))).anneal is False


def test_nested_flags_show_the_section_default_not_the_class_default():
    @dataclass(frozen=True)
    class Outer:
        inner: Inner = Inner(lr=0.5)
        """A section whose default differs from Inner()."""

    parser = argparse.ArgumentParser()
    add_config_flags(parser, Outer)
    help_text = " ".join(parser.format_help().split())
    assert "--inner.lr FLOAT Adam learning rate. [default: 0.5]" in help_text


def test_list_flags_split_on_commas_outside_parentheses():
    # a reward spec such as regex(\d{1,3}) carries commas that belong to it
    from gradascent.algos.grpo import GRPOConfig

    flags = {"rewards": r"numeric_match,regex(\d{1,3}),regex((a,b)|c)", "reward_weights": "1,0.5,0.25"}
    cfg = load_config(GRPOConfig, flag_overrides=flags)
    assert cfg.rewards == ("numeric_match", r"regex(\d{1,3})", "regex((a,b)|c)")
    assert cfg.reward_weights == (1.0, 0.5, 0.25)
    assert load_config(Cfg, flag_overrides={"hidden": "32,16,"}).hidden == (32, 16)
    assert load_config(Cfg, flag_overrides={"hidden": "[32, 16]"}).hidden == (32, 16)  # the YAML form too


def test_configs_built_in_python_are_checked_like_loaded_ones():
    from pathlib import Path

    from gradascent.algos.a2c import A2CConfig
    from gradascent.algos.grpo import GRPOConfig
    from gradascent.algos.ppo import PPOConfig
    from gradascent.algos.rlhf import RLHFConfig
    from gradascent.algos.sft import SFTConfig

    with pytest.raises(ConfigError, match="'optimizer': 'sgd' is not allowed; expected one of 'adam', 'rmsprop'"):
        PPOConfig(optimizer="sgd")
    with pytest.raises(ConfigError, match="did you mean 'nstep'"):
        A2CConfig(advantage="n-step")
    with pytest.raises(ConfigError, match="'steps': 2.5 is not allowed; expected int"):
        GRPOConfig(steps=2.5)
    with pytest.raises(ConfigError, match="'rewards': 'numeric_match' is not allowed; expected a list of str"):
        GRPOConfig(rewards="numeric_match")
    with pytest.raises(ConfigError, match="'reward_weights': \\(nan,\\) is not allowed; expected a finite value"):
        GRPOConfig(rewards=("numeric_match",), reward_weights=(float("nan"),))
    for key in ("clip_eps_low", "clip_eps_high"):  # an empty side of the clip range, refused as PPO's clip_eps 0
        with pytest.raises(ConfigError, match=f"'{key}': 0.0 is not allowed"):
            GRPOConfig(**{key: 0})
    with pytest.raises(ConfigError, match="'seed': None"):
        GRPOConfig(seed=None)
    with pytest.raises(ConfigError, match="'seed': 99999999999999999999 is not allowed; expected an integer in"):
        GRPOConfig(seed=99999999999999999999)  # torch cannot take it: an overflow traceback at the start
    with pytest.raises(ConfigError, match="unknown config key 'sft.stepz'"):
        RLHFConfig(sft={"stepz": 2})
    # normalised as from_dict normalises YAML values
    cfg = GRPOConfig(steps=2.0, lr="1e-5", rewards=["numeric_match"], model=Path("m"))
    assert (cfg.steps, cfg.lr, cfg.rewards, cfg.model) == (2, 1e-5, ("numeric_match",), "m")
    assert type(cfg.steps) is int
    # NumPy scalars, as a sweep over np.arange or np.geomspace hands them, count as the numbers they hold
    import numpy as np

    cfg = GRPOConfig(steps=np.int64(3), lr=np.float32(0.5), seed=np.int32(7), group_size=np.float64(4.0))
    assert (cfg.steps, cfg.lr, cfg.seed, cfg.group_size) == (3, 0.5, 7, 4)
    assert (type(cfg.steps), type(cfg.lr), type(cfg.seed), type(cfg.group_size)) == (int, float, int, int)
    assert A2CConfig(norm_adv=np.bool_(True)).norm_adv is True
    with pytest.raises(ConfigError, match=r"'steps': np.float64\(2.5\) is not allowed; expected int"):
        GRPOConfig(steps=np.float64(2.5))
    with pytest.raises(ConfigError, match="'steps': np.True_ is not allowed; expected int"):
        GRPOConfig(steps=np.bool_(True))
    assert SFTConfig(out=Path("runs/x")).out == "runs/x"
    chained = RLHFConfig(sft={"steps": 2})
    assert chained.sft.steps == 2 and chained.sft.lr == RLHFConfig().sft.lr != SFTConfig().lr  # the section's default


def test_keys_of_earlier_versions_are_read_under_their_new_names(tmp_path):
    from gradascent.algos.reward_model import RewardModelConfig
    from gradascent.algos.sft import SFTConfig
    from gradascent.errors import GradascentWarning
    from gradascent.run.config import renamed

    path = tmp_path / "rm.yaml"
    path.write_text("model: m\ncheckpoint_every: 3\nkeep-checkpoints: 4\n")
    with pytest.warns(GradascentWarning) as caught:
        cfg = load_config(RewardModelConfig, path)
    assert [str(w.message) for w in caught] == ["config key 'checkpoint_every' is now called 'save_every'; read as that",
                                                "config key 'keep-checkpoints' is now called 'keep_last'; read as that"]
    assert (cfg.save_every, cfg.keep_last) == (3, 4)
    with pytest.warns(GradascentWarning, match="'grad_clip' is now called 'max_grad_norm'"):
        assert from_dict(SFTConfig, {"grad_clip": 0.25}).max_grad_norm == 0.25
    with pytest.raises(ConfigError, match="'grad_clip' and 'max_grad_norm' are the same setting"):
        from_dict(SFTConfig, {"grad_clip": 0.25, "max_grad_norm": 0.5})
    # a saved config.yaml compared with a resumed run's config: old names read as the new ones
    assert renamed({"checkpoint_every": 2, "ppo": {"keep_checkpoints": 1}, "lr": 0.1}) == \
        {"save_every": 2, "ppo": {"keep_last": 1}, "lr": 0.1}


@pytest.mark.parametrize("value, shown", [
    (None, "null"), (True, "true"), (False, "false"), ((64, 64), "[64, 64]"), ([], "[]"), ("tanh", "tanh"),
    ("CartPole-v1", "CartPole-v1"), ("3", "'3'"), ("null", "'null'"), ("", "''"), ("a: b", "'a: b'"),
    (2.5e-4, "0.00025"), (100_000, "100000"), (("a", None), "[a, null]"),
])
def test_defaults_in_the_help_are_written_as_in_a_config_file(value, shown):
    from gradascent.run.config import shown_value

    assert shown_value(value) == shown
    if isinstance(value, (str, type(None), bool, int, float)):  # what the help shows reads back as the value
        assert yaml.safe_load(shown) == value


def test_a_quoted_integer_in_yaml_is_an_int_as_a_quoted_float_is_a_float(tmp_path):
    from gradascent.algos.sft import SFTConfig

    path = tmp_path / "c.yaml"
    path.write_text('steps: "3"\nlr: "1e-3"\n')
    cfg = load_config(SFTConfig, path)
    assert (cfg.steps, cfg.lr) == (3, 0.001) and type(cfg.steps) is int
    for text in ("3.0", "1e3", "three", ""):  # text that is no integer stays refused
        path.write_text(f'steps: "{text}"\n')
        with pytest.raises(ConfigError, match=f"config key 'steps': '{text}' is not allowed; expected int"):
            load_config(SFTConfig, path)


@pytest.mark.parametrize("cls", ["sft:SFTConfig", "reward_model:RewardModelConfig", "ppo_rlhf:PPORLHFConfig",
                                 "grpo:GRPOConfig", "ppo:PPOConfig", "a2c:A2CConfig", "reinforce:ReinforceConfig"])
def test_every_trainer_turns_gradient_clipping_off_with_0_or_null(cls):
    # it was 0 in sft, null in grpo and the classic trainers, and neither in rm and ppo
    import importlib

    module, name = cls.split(":")
    config = getattr(importlib.import_module(f"gradascent.algos.{module}"), name)
    extra = {"policy": "p", "reward_model": "r"} if name == "PPORLHFConfig" else {}
    for off in (0, 0.0, None):
        assert config(max_grad_norm=off, **extra).max_grad_norm == off
    with pytest.raises(ConfigError, match="'max_grad_norm': -1.0 is not allowed"):
        config(max_grad_norm=-1.0, **extra)
