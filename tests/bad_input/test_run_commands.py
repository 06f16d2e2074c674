"""Bad input to the commands every run shares: plot and resume."""

import json

import pytest
import torch

from gradascent.run import RunDir, save_checkpoint


def test_plot_missing_dir(fails_cleanly, tmp_path):
    fails_cleanly(["plot", str(tmp_path / "nope")], "nope")


def test_plot_binary_metrics(fails_cleanly, tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.jsonl").write_bytes(b"\x00\xff\xfe\x81" * 50 + b"\n{}\n")
    fails_cleanly(["plot", str(tmp_path / "r")], "metrics.jsonl")


def test_resume_without_run_json(fails_cleanly, tmp_path):
    fails_cleanly(["resume", str(tmp_path)], "run.json is missing")


def test_resume_of_a_directory_that_does_not_exist_says_so(fails_cleanly, tmp_path):
    fails_cleanly(["resume", str(tmp_path / "nope")], f"{tmp_path / 'nope'} does not exist")  # "run.json is missing"


def test_resume_of_an_edited_config_yaml_names_the_file(fails_cleanly, tmp_path):
    run = RunDir(tmp_path / "r", tensorboard=False)
    (run.path / "run.json").write_text(json.dumps({"config_class": "gradascent.algos.grpo:GRPOConfig"}))
    (run.path / "config.yaml").write_text("lr: -1\n")
    save_checkpoint(run.checkpoints, 1, {"w": torch.ones(2)})
    line = fails_cleanly(["resume", str(run.path)], f"{run.path / 'config.yaml'}: config key 'lr'")
    assert "expected > 0" in line


def test_resume_with_truncated_checkpoint_leaves_it_alone(fails_cleanly, tmp_path):
    # A run directory of a trainer that exists, whose only checkpoint was cut short.
    run = RunDir(tmp_path / "r", tensorboard=False)
    (run.path / "run.json").write_text(json.dumps({"config_class": "gradascent.no_such_module:Cfg"}))
    ckpt = save_checkpoint(run.checkpoints, 3, {"w": __import__("torch").ones(100)})
    data = (ckpt / "tensors.safetensors").read_bytes()
    (ckpt / "tensors.safetensors").write_bytes(data[:40])
    fails_cleanly(["resume", str(run.path)], "run.json", protect=run.checkpoints)


@pytest.mark.parametrize("config_class", [
    "gradascent.algos.sft:train_sft",  # a function, not a config class (it was a TypeError traceback)
    "gradascent.algos.sft:RESUMABLE_CHANGES",
    "this:Cfg",  # outside the trainers: not even imported (importing `this` prints a poem)
    "json:JSONDecoder",
    ["not", "text"],
])
def test_resume_accepts_only_a_config_class_of_a_trainer(tmp_path, config_class):
    import sys

    from gradascent.errors import GradascentError
    from gradascent.run.resume import resume_run

    run = RunDir(tmp_path / "r", tensorboard=False)
    (run.path / "run.json").write_text(json.dumps({"config_class": config_class}))
    save_checkpoint(run.checkpoints, 1, {"w": torch.ones(3)})
    assert "this" not in sys.modules
    with pytest.raises(GradascentError, match="run.json does not name a known gradascent trainer"):
        resume_run(run.path)
    assert "this" not in sys.modules


def test_usage_errors_are_one_line(fails_cleanly):
    fails_cleanly(["plot", "somewhere", "--no-such-flag"], "--no-such-flag")
    fails_cleanly(["plot"], "DIR")
