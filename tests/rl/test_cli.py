"""The command line: training and evaluation, and one-line errors for bad input before training starts."""

import pytest

from gradascent.cli import main


@pytest.mark.parametrize("argv, key, words", [
    (["ppo", "--env", "NoSuchEnv-v9"], "'env'", "registered gymnasium environment id"),
    (["a2c", "--env", "GradascentTest/MultiBinary-v0"], "'env'", "Discrete(n) or a bounded, non-empty 1-D Box"),
    (["ppo", "--env", "GradascentTest/IntBox-v0"], "'env'", "1-D Box of floats"),  # int64 actions
    (["ppo", "--env", "GradascentTest/EmptyBox-v0"], "'env'", "non-empty 1-D Box"),
    (["ppo", "--env", "no_such_module:CartPole-v1"], "'env'", "module 'no_such_module' cannot be imported"),
    (["a2c", "--seed", "-1"], "'seed'", "an integer in [0, 2**32)"),
    (["ppo", "--seed", "99999999999999999999"], "'seed'", "an integer in [0, 2**32)"),
    (["ppo", "--num-envs", "1", "--num-steps", "4", "--num-minibatches", "4"], "'num_minibatches'",
     "minibatches of one sample whiten every advantage to 0"),
    (["reinforce", "--env", "FrozenLake-v1"], "'env'", "1-D Box"),
    (["ppo", "--total-steps", "0"], "'total_steps'", "an integer > 0"),
    (["a2c", "--total-steps", "-5"], "'total_steps'", "an integer > 0"),
    (["reinforce", "--lr", "-0.001"], "'lr'", "a finite float > 0"),
    (["ppo-penalty", "--lr", "0"], "'lr'", "a finite float > 0"),
    (["ppo", "--clip-eps", "1.5"], "'clip_eps'", "in (0, 1)"),
    (["ppo", "--clip-eps", "0"], "'clip_eps'", "in (0, 1)"),
    (["ppo-penalty", "--kl-target", "0"], "'kl_target'", "a float > 0"),
    (["ppo-penalty", "--kl-target", "-0.01"], "'kl_target'", "a float > 0"),
    (["ppo-penalty", "--kl-threshold", "1"], "'kl_threshold'", "a float > 1"),
    (["ppo", "--loss", "kl_penalty"], "'loss'", "expected 'clip'"),
    (["ppo-penalty", "--loss", "clip"], "'loss'", "expected 'kl_penalty'"),  # parsed, though not in --help
    (["ppo", "--num-envs", "1", "--num-steps", "1", "--num-minibatches", "1"], "'num_steps'",
     "at least 2 transitions a batch with norm_adv (num_envs * num_steps = 1"),  # it said "at most 0"
    (["ppo", "--stop-at-return", "nan", "--eval-every", "1"], "'stop_at_return'", "a number or null"),
    (["a2c", "--advantage", "gae", "--n-step", "3"], "'n_step'", "null with advantage gae"),
    (["a2c", "--stop-at-return", "inf", "--eval-every", "1"], "'stop_at_return'", "a number or null"),
    (["ppo-penalty", "--kl-coef", "0"], "'kl_coef'", "a float > 0 with loss kl_penalty (beta adapts by halving"),
    (["ppo-penalty", "--target-kl", "0.01"], "'target_kl'", "null with loss kl_penalty"),
    (["ppo", "--env", ":"], "'env'", "module '' cannot be imported"),
    (["ppo", "--env", ".x:Y-v0"], "'env'", "module '.x' cannot be imported"),
    (["a2c", "--env", "GradascentTest/Broken-v0"], "'env'", "cannot be created: its constructor raised TypeError"),
])
def test_bad_input_is_one_line_naming_the_parameter(tmp_path, capsys, argv, key, words):
    out = tmp_path / "run"
    assert main(["rl", *argv, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gradascent: error: ")
    assert key in err and words in err
    assert not (out / "metrics.jsonl").exists()  # refused before training started


def test_train_then_eval_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["rl", "ppo", "--env", "CartPole-v1", "--total-steps", "1024", "--seed", "2", "--out", str(out),
            "--tensorboard", "false", "--no-progress"]
    assert main(argv) == 0
    assert "eval return" in capsys.readouterr().out
    assert (out / "policy.safetensors").exists() and (out / "summary.json").exists()
    assert main(["rl", "eval", str(out), "--episodes", "3"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("mean return ") and "over 3 episodes" in printed
    # The same directory again without --resume is refused; with --resume a changed field is refused.
    assert main(argv) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["rl", "ppo", "--out", str(out), "--resume", "--lr", "0.1", "--no-progress"]) == 2
    assert "lr changed" in capsys.readouterr().err
    # A smaller budget than the steps already taken, an edited config.yaml and a --config file are refused:
    # the checkpoint keeps the config it was trained with.
    assert main(["rl", "ppo", "--out", str(out), "--resume", "--total-steps", "512", "--no-progress"]) == 2
    assert "total_steps=512 is below the 1024 env steps" in capsys.readouterr().err
    saved = (out / "config.yaml").read_text()
    (out / "config.yaml").write_text(saved.replace("lr: 0.0015", "lr: 0.5"))
    assert main(["rl", "ppo", "--out", str(out), "--resume", "--total-steps", "3072", "--no-progress"]) == 2
    assert "lr differ from its checkpoint's" in capsys.readouterr().err
    (out / "config.yaml").write_text(saved)
    assert main(["rl", "a2c", "--out", str(out), "--resume", "--no-progress"]) == 2
    assert "is a run of ppo, not a2c" in capsys.readouterr().err
    assert main(["rl", "ppo", "--out", str(out), "--resume", "--config", str(out / "config.yaml")]) == 2
    assert "leave out --config" in capsys.readouterr().err
    # --resume with a larger budget continues the finished run.
    assert main(["rl", "ppo", "--out", str(out), "--resume", "--total-steps", "3072", "--no-progress"]) == 0
    assert "after 3072 env steps" in capsys.readouterr().out


def test_eval_of_a_directory_without_a_policy_is_one_line(tmp_path, capsys):
    assert main(["rl", "eval", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no saved policy" in err


def test_eval_of_a_policy_that_does_not_fit_its_env_or_its_network_is_one_line(tmp_path, capsys):
    import json
    import shutil

    out = tmp_path / "run"
    assert main(["rl", "reinforce", "--env", "CartPole-v1", "--total-steps", "300", "--out", str(out),
                 "--tensorboard", "false", "--no-progress"]) == 0
    meta = json.loads((out / "policy.json").read_text())
    weights = (out / "policy.safetensors").read_bytes()
    for change, words in (
        ({"env": "Pendulum-v1"}, "the policy was built for 4-dim observations and 2 discrete actions, but "
                                 "Pendulum-v1 has 3-dim observations and 1-dim Box actions"),
        ({"env": "Acrobot-v1"}, "but Acrobot-v1 has 6-dim observations and 3 discrete actions"),
        ({"network": {**meta["network"], "hidden_sizes": [32, 32]}},
         "policy.safetensors and the network of policy.json disagree: tensor actor_body.0.bias is of shape (64,) "
         "in the file, and the network needs (32,)"),
    ):
        broken = tmp_path / f"broken-{len(words)}"
        shutil.copytree(out, broken)
        (broken / "policy.json").write_text(json.dumps({**meta, **change}))
        capsys.readouterr()
        assert main(["rl", "eval", str(broken)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err and str(broken) in err, err
        assert (broken / "policy.safetensors").read_bytes() == weights


def test_eval_of_a_box_policy_whose_bounds_differ_from_its_envs_is_one_line(tmp_path, capsys):
    import json

    out = tmp_path / "run"
    assert main(["rl", "reinforce", "--env", "Pendulum-v1", "--total-steps", "400", "--out", str(out),
                 "--tensorboard", "false", "--no-progress"]) == 0
    meta = json.loads((out / "policy.json").read_text())
    assert meta["network"]["action"]["low"] == [-2.0] and meta["network"]["action"]["high"] == [2.0]
    meta["network"]["action"]["low"] = [-1.0]  # as if Pendulum's torque limit had changed since training
    (out / "policy.json").write_text(json.dumps(meta))
    capsys.readouterr()
    assert main(["rl", "eval", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "built for Box actions in [-1, 2], but Pendulum-v1's Box is [-2, 2]" in err, err


def test_help_names_the_presets_that_replace_the_listed_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["rl", "ppo", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "(CartPole-v1, Pendulum-v1; docs/classic.md): its values replace the defaults listed below" in shown


def test_an_env_of_ones_own_through_its_module_and_a_resume_with_the_other_ppo(tmp_path, capsys):
    # module:EnvId imports the module (which registers the id), as gymnasium.make does; rl eval reads it back
    out = tmp_path / "run"
    env = "gymnasium.envs.classic_control:CartPole-v1"
    assert main(["rl", "ppo", "--env", env, "--total-steps", "128", "--num-steps", "32", "--num-envs", "2",
                 "--out", str(out), "--tensorboard", "false", "--no-progress"]) == 0
    assert main(["rl", "eval", str(out), "--episodes", "2"]) == 0
    assert "over 2 episodes" in capsys.readouterr().out
    assert main(["rl", "ppo-penalty", "--out", str(out), "--resume", "--no-progress"]) == 2
    assert "is a run of ppo, not ppo-penalty" in capsys.readouterr().err


def test_resuming_a_finished_run_with_its_own_budget_leaves_it_as_it_was(tmp_path, capsys):
    # 1000 steps is not a multiple of the 1024-step rollout: the run ends after 1024, past its budget.
    out = tmp_path / "run"
    argv = ["rl", "ppo", "--env", "CartPole-v1", "--total-steps", "1000", "--out", str(out), "--tensorboard",
            "false", "--no-progress"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "after 1024 env steps" in first
    files = {p.name: p.read_bytes() for p in (out / "summary.json", out / "metrics.jsonl", out / "policy.safetensors")}
    assert main([*argv, "--resume"]) == 0
    assert "after 1024 env steps" in capsys.readouterr().out
    assert main(["resume", str(out)]) == 0
    assert {p.name: p.read_bytes() for p in (out / "summary.json", out / "metrics.jsonl",
                                             out / "policy.safetensors")} == files
    # A budget below the steps taken is still refused.
    assert main([*argv, "--resume", "--total-steps", "512"]) == 2
    assert "total_steps=512 is below the 1024 env steps" in capsys.readouterr().err


def test_the_library_s_warnings_are_one_line_on_the_command_line(tmp_path, capsys, monkeypatch):
    import functools
    import json
    import warnings

    from gradascent.rl import saved

    out = tmp_path / "run"
    assert main(["rl", "reinforce", "--env", "GradascentTest/Trunc-v0", "--total-steps", "12", "--num-envs", "2",
                 "--out", str(out), "--tensorboard", "false", "--no-progress"]) == 0
    meta = json.loads((out / "policy.json").read_text())
    (out / "policy.json").write_text(json.dumps({**meta, "env": "GradascentTest/Endless-v0"}))  # same spaces
    monkeypatch.setattr(saved, "run_episodes", functools.partial(saved.run_episodes, max_steps=5))
    capsys.readouterr()
    assert main(["rl", "eval", str(out), "--episodes", "2"]) == 0
    err = capsys.readouterr().err
    assert err == ("gradascent: warning: 2 of 2 evaluation episodes were cut at 5 steps without ending (does the "
                   "environment set no time limit?); their returns are partial\n"), err
    # Python's own format is back once the command returns
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        warnings.warn("after the command")
    assert [str(w.message) for w in seen] == ["after the command"]


def test_an_environment_module_is_found_in_the_current_directory(tmp_path, monkeypatch, capsys):
    # As a reward module is: the gradascent console script does not put the current directory on sys.path,
    # so 'mymodule:MyEnv-v0' (docs/classic.md) needed PYTHONPATH=. to be found.
    (tmp_path / "my_cwd_envs.py").write_text(
        "import gymnasium as gym\n"
        "gym.register('CwdTest/Short-v0', entry_point='gymnasium.envs.classic_control:CartPoleEnv', "
        "max_episode_steps=5)\n")
    monkeypatch.chdir(tmp_path)
    assert main(["rl", "ppo", "--env", "my_cwd_envs:CwdTest/Short-v0", "--total-steps", "64", "--num-envs", "2",
                 "--num-steps", "32", "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert (tmp_path / "run" / "policy.json").is_file()


def test_a_variants_own_fields_are_not_offered_in_its_help(capsys):
    # ppo-penalty's help showed --loss {clip,kl_penalty} [default: clip], a value it refuses
    for algo in ("ppo", "ppo-penalty"):
        with pytest.raises(SystemExit):
            main(["rl", algo, "--help"])
        text = capsys.readouterr().out
        assert "--loss" not in text and "--clip-eps" in text and "--num-minibatches" in text


def test_resuming_another_trainers_run_from_python_names_the_trainer(tmp_path):
    from gradascent.algos import a2c, ppo
    from gradascent.algos.presets import classic_config
    from gradascent.errors import ConfigError

    out = tmp_path / "run"
    ppo.train(classic_config("ppo", "CartPole-v1", overrides={"total_steps": 512, "tensorboard": False}), out=out,
              progress=False)
    cfg = classic_config("a2c", "CartPole-v1", overrides={"total_steps": 1024, "tensorboard": False})
    with pytest.raises(ConfigError, match=r"holds a run of PPOConfig \(run.json\), not of A2CConfig"):  # was:
        a2c.train(cfg, out=out, resume=True, progress=False)  # "unknown config key 'loss' for A2CConfig"


def test_a_directory_holding_a_finished_runs_outputs_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("{}")  # outputs of a run whose metrics and checkpoints were removed
    (out / "policy.safetensors").write_bytes(b"weights")
    assert main(["rl", "ppo", "--total-steps", "256", "--out", str(out), "--no-progress"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "policy.safetensors").read_bytes() == b"weights"
