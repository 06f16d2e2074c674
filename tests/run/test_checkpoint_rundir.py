"""Atomic checkpoints (no pickle, no NaN on disk, rotation, corruption detected) and the run directory."""

import json
import os
import random

import numpy as np
import pytest
import torch

from gradascent.errors import CheckpointError, GradascentError, NonFiniteError
from gradascent.run import (
    RunDir,
    capture_rng,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)


def _model_and_optimizer():
    torch.manual_seed(0)
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    m(torch.randn(4, 3)).pow(2).sum().backward()
    opt.step()
    return m, opt


def test_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    m, opt = _model_and_optimizer()
    rng = capture_rng()
    after = (random.random(), np.random.rand(), torch.rand(1).item())
    save_checkpoint(tmp_path, 7, {"model": m.state_dict(), "opt": opt.state_dict(), "rng": rng,
                                  "beta": 0.25, "counts": (1, 2), "arr": np.arange(3)})
    step, state = load_checkpoint(latest_checkpoint(tmp_path))
    assert step == 7 and state["beta"] == 0.25 and state["counts"] == (1, 2)
    assert np.array_equal(state["arr"], np.arange(3))
    for k, v in m.state_dict().items():
        assert torch.equal(state["model"][k], v)
    opt2 = torch.optim.Adam(m.parameters(), lr=0.1)
    opt2.load_state_dict(state["opt"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    restore_rng(state["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == after


def test_nan_is_never_written_and_old_checkpoints_survive(tmp_path):
    m, _ = _model_and_optimizer()
    good = save_checkpoint(tmp_path, 1, {"model": m.state_dict()})
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    with torch.no_grad():
        m.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="weight"):
        save_checkpoint(tmp_path, 2, {"model": m.state_dict()})
    assert list_checkpoints(tmp_path) == [good]
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_keep_last_rotation_and_half_written_checkpoints_are_ignored(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {"x": torch.tensor([float(step)])}, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003", "step_00000004"]
    # A kill during a save leaves only a temporary directory: it is not a checkpoint.
    (tmp_path / ".tmp-step_00000005-123").mkdir()
    (tmp_path / "step_00000006").mkdir()  # a directory without its files is not complete either
    assert latest_checkpoint(tmp_path).name == "step_00000004"


def test_truncated_and_corrupt_checkpoints_raise_checkpoint_error(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"x": torch.arange(1000.0)})
    data = (path / "tensors.safetensors").read_bytes()
    (path / "tensors.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    (path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    os.remove(path / "state.json")
    with pytest.raises(CheckpointError, match="state.json is missing"):
        load_checkpoint(path)


def test_run_dir_contract(tmp_path):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class C:
        lr: float = 0.1

    run = RunDir(tmp_path / "out")
    run.write_config(C())
    for step in range(1, 4):
        run.log(step, {"env_steps": step * 10, "loss": torch.tensor(0.5), "nan_metric": float("nan"),
                       "kl_coef": torch.tensor(0.02), "lr": np.float32(3e-4), "beta": 2.0 ** -12,
                       "f64": 1.174028980982257, "tenth": 0.1, "nested": {"a": [torch.tensor(0.3)]}})
    run.write_summary({"eval_return_mean": 1.5})
    run.close()
    out = tmp_path / "out"
    assert (out / "config.yaml").read_text() == "lr: 0.1\n"
    assert json.loads((out / "run.json").read_text())["config_class"].endswith(":test_run_dir_contract.<locals>.C")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # A float32 is written as the shortest decimal that reads back as it (0.02, not its exact value
    # 0.019999999552965164), nested ones too; a Python float as it is (2**-12 stays 0.000244140625 exactly).
    assert rows[0] == {"step": 1, "env_steps": 10, "loss": 0.5, "nan_metric": None, "kl_coef": 0.02, "lr": 3e-4,
                       "beta": 0.000244140625, "f64": 1.174028980982257, "tenth": 0.1, "nested": {"a": [0.3]}}
    assert '"kl_coef": 0.02, "lr": 0.0003,' in (out / "metrics.jsonl").read_text()
    assert json.loads((out / "summary.json").read_text()) == {"eval_return_mean": 1.5}
    assert not (out / "checkpoints").exists()  # made by the first checkpoint: none here
    assert any((out / "tb").iterdir())  # TensorBoard events beside metrics.jsonl
    # Resume: rows after the checkpoint's step are dropped, and so is a half-written last line.
    with (out / "metrics.jsonl").open("a") as fh:
        fh.write('{"step": 4, "env_st')
    run.truncate_metrics(2)
    assert [r["step"] for r in run.read_metrics()] == [1, 2]


def test_a_file_where_the_checkpoints_go_is_refused_before_the_run_starts(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "checkpoints").write_text("not a directory")
    with pytest.raises(GradascentError, match=r"out/checkpoints: a file is in the way"):
        RunDir(tmp_path / "out")


def test_a_run_stopped_before_its_first_checkpoint_is_told_apart(tmp_path):
    from gradascent.errors import ConfigError
    from gradascent.run.rundir import check_resume

    run = RunDir(tmp_path / "r")
    run.log(0, {"loss": 1.0})  # e.g. a baseline evaluation, then a crash before any checkpoint
    with pytest.raises(ConfigError, match="stopped before its first checkpoint .* pass --resume .* to start it over"):
        check_resume(run, {}, False, False, frozenset())
    check_resume(run, {}, False, True, frozenset())  # --resume: starts over
    save_checkpoint(run.checkpoints, 1, {"x": torch.zeros(1)})
    with pytest.raises(ConfigError, match="already holds a run \\(metrics.jsonl\\); pass --resume .* to continue it"):
        check_resume(run, {}, False, False, frozenset())


def test_resuming_a_run_of_another_trainer_names_the_trainer_not_the_differing_keys(tmp_path):
    # An sft run resumed by grpo listed "22 keys differ"; run.json says which config made the run.
    from dataclasses import dataclass

    from gradascent.errors import ConfigError
    from gradascent.run.rundir import check_resume

    @dataclass(frozen=True)
    class SFTLike:
        lr: float = 0.1

    @dataclass(frozen=True)
    class GRPOLike:
        lr: float = 0.1

    run = RunDir(tmp_path / "out", tensorboard=False)
    run.write_config(SFTLike())
    check_resume(run, SFTLike(), True, True, frozenset())  # the same trainer: fine
    with pytest.raises(ConfigError, match=r"holds a run of .*SFTLike \(run.json\), not of GRPOLike; continue it "
                                          r"with `gradascent resume"):
        check_resume(run, GRPOLike(), True, True, frozenset())


def test_a_state_missing_what_the_trainer_saved_is_a_checkpoint_error_naming_the_key(tmp_path):
    # state.json {"step": 5, "state": {}} parses, and resuming grpo from it was a KeyError traceback.
    path = save_checkpoint(tmp_path, 5, {"model": {"w": torch.zeros(2)}})
    step, state = load_checkpoint(path)
    assert step == 5 and torch.equal(state["model"]["w"], torch.zeros(2))
    with pytest.raises(CheckpointError, match=r"step_00000005 is corrupt: its state.json has no 'world_size'"):
        state["world_size"]
    assert state.get("world_size") is None  # .get stays a plain lookup


def test_what_a_killed_save_leaves_is_resumable_and_tidied(tmp_path):
    for step in (1, 2):
        save_checkpoint(tmp_path, step, {"x": torch.tensor([float(step)])})
    # A save of step 2 again, killed between its two renames: the old step 2 moved aside, the new one still
    # under its temporary name; and a save of step 3 killed while writing.
    os.replace(tmp_path / "step_00000002", tmp_path / ".old-step_00000002-4242")
    (tmp_path / ".tmp-step_00000002-4242").mkdir()
    (tmp_path / ".tmp-step_00000003-4243").mkdir()
    (tmp_path / ".tmp-step_00000003-4243" / "tensors.safetensors").write_bytes(b"half")
    # The moved-aside step 2 is complete: it is still the newest checkpoint, not step 1.
    newest = latest_checkpoint(tmp_path)
    assert newest.name == ".old-step_00000002-4242"
    step, state = load_checkpoint(newest)
    assert step == 2 and state["x"].item() == 2.0
    from gradascent.run.checkpoint import checkpoint_step

    assert checkpoint_step(newest) == 2
    # The next save puts the moved-aside step 2 back under its name and removes the rest.
    save_checkpoint(tmp_path, 4, {"x": torch.tensor([4.0])})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001", "step_00000002", "step_00000004"]
    assert load_checkpoint(tmp_path / "step_00000002")[1]["x"].item() == 2.0
    # A moved-aside step whose directory exists again (saved anew) is only a leftover: removed.
    (tmp_path / "step_00000004").rename(tmp_path / ".old-step_00000004-99")
    save_checkpoint(tmp_path, 4, {"x": torch.tensor([5.0])})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001", "step_00000002", "step_00000004"]
    assert load_checkpoint(tmp_path / "step_00000004")[1]["x"].item() == 5.0


def test_too_few_steps_for_another_trainers_run_names_the_trainer(tmp_path):
    # grpo --resume into an SFT run that did 8 steps, with steps=1: the run is an SFT run, which is the problem
    # to report, not that 1 < 8.
    from gradascent.algos.grpo import GRPOConfig
    from gradascent.algos.sft import SFTConfig
    from gradascent.run.rundir import check_not_past

    run = tmp_path / "sft-run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run.json").write_text('{"config_class": "gradascent.algos.sft:SFTConfig"}\n')
    ckpt = save_checkpoint(run / "checkpoints", 8, {"x": torch.zeros(1)})
    with pytest.raises(GradascentError, match="holds a run of SFTConfig \\(run.json\\), not of GRPOConfig"):
        check_not_past(ckpt, 1, cfg=GRPOConfig())
    with pytest.raises(GradascentError, match="steps=1 is fewer than the 8"):
        check_not_past(ckpt, 1, cfg=SFTConfig())
    check_not_past(ckpt, 8, cfg=SFTConfig())


def _tb_steps(path, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path / "tb"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_a_resumed_run_leaves_tensorboard_one_curve_and_a_restarted_one_none_of_the_earlier(tmp_path):
    first = RunDir(tmp_path)
    for step in range(1, 6):  # a run killed after logging step 5, its newest checkpoint at step 3
        first.log(step, {"loss": float(step)})
    first.close()
    # TensorBoard reads event files in name order, named by the second their writer started: the killed
    # process's file as a minute older than the resumed one's (in one test they may share a second)
    for f in (tmp_path / "tb").glob("events.out.tfevents.*"):
        parts = f.name.split(".")
        parts[3] = f"{int(parts[3]) - 60:010d}"
        f.rename(f.with_name(".".join(parts)))
    resumed = RunDir(tmp_path)
    resumed.truncate_metrics(3)
    for step in (4, 5, 6):
        resumed.log(step, {"loss": 10.0 * step})
    resumed.close()
    expected = [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0), (5, 50.0), (6, 60.0)]
    assert [(r["step"], r["loss"]) for r in resumed.read_metrics()] == expected
    assert _tb_steps(tmp_path, "loss") == expected  # the first process's steps 4 and 5 are purged

    again = RunDir(tmp_path)  # started over (no checkpoint): nothing of the earlier attempts is kept
    again.clear_metrics()
    again.log(1, {"loss": -1.0})
    again.close()
    assert [(r["step"], r["loss"]) for r in again.read_metrics()] == [(1, -1.0)]
    assert _tb_steps(tmp_path, "loss") == [(1, -1.0)]


def test_weight_files_get_the_mode_of_any_other_new_file(tmp_path):
    # safetensors creates its files 0600 whatever the umask: weights unreadable beside readable configs
    from gradascent.lm import RewardModel, build_model, char_tokenizer, save_model
    from gradascent.rl.envs import ActionSpec, ObsNormalizer
    from gradascent.rl.policy import ActorCritic
    from gradascent.rl.saved import save_policy

    previous = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "ckpt", 1, {"w": torch.zeros(2)})
        tok = char_tokenizer()
        model = build_model("qwen2-micro", tok, seed=0)
        save_model(model, tok, tmp_path / "model")
        RewardModel(model).save_pretrained(tmp_path / "rm", tok)
        policy = ActorCritic(4, ActionSpec(kind="discrete", dim=2))
        save_policy(tmp_path / "policy", policy, ObsNormalizer(4, enabled=False), "CartPole-v1")
    finally:
        os.umask(previous)
    weights = sorted(tmp_path.rglob("*.safetensors"))
    assert len(weights) == 5  # checkpoint, model, reward model's backbone and head, policy
    assert {f.relative_to(tmp_path).as_posix(): oct(f.stat().st_mode & 0o777) for f in weights} == \
        {f.relative_to(tmp_path).as_posix(): "0o644" for f in weights}
    assert oct((tmp_path / "model" / "config.json").stat().st_mode & 0o777) == "0o644"


def test_a_metrics_line_that_is_json_but_no_object_ends_the_log_as_a_cut_line_does(tmp_path):
    run = RunDir(tmp_path, tensorboard=False)
    run.log(1, {"loss": 1.0})
    with run.metrics_path.open("a") as f:
        f.write("[2, 3]\n")  # a line no trainer writes (truncate_metrics called .get on it: AttributeError)
    run.truncate_metrics(5)
    assert [r["step"] for r in run.read_metrics()] == [1]
