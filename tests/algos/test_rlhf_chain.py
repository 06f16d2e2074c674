"""`gradascent rlhf`: SFT -> reward model -> PPO on one config, each stage's run directory and models."""

import json

import pytest

from _rlhf_fixtures import cli_error
from gradascent.algos.rlhf import CHAIN_FIELDS
from gradascent.cli import main
from gradascent.lm import RewardModel, ValueModel, load_model
from gradascent.run import RunDir

TINY = """\
seed: 3
sft:
  model: qwen2-micro
  n_train: 64
  n_eval: 8
  steps: 4
  batch_size: 16
  warmup_steps: 0
  eval_generate: 4
  save_every: 0
rm:
  train_pairs: 32
  eval_pairs: 16
  batch_size: 16
ppo:
  updates: 2
  batch_size: 8
  minibatch_size: 4
  epochs: 1
  max_new_tokens: 6
  eval_prompts: 4
  eval_every: 0
"""


def test_chain_writes_every_stage_and_a_summary(tmp_path, capsys):
    cfg = tmp_path / "rlhf.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "run"
    assert main(["rlhf", "--config", str(cfg), "--out", str(out), "--ppo.kl-coef", "0.25"]) == 0
    printed = capsys.readouterr().out
    assert "hidden score of greedy completions SFT" in printed

    summary = json.loads((out / "summary.json").read_text())
    rows = RunDir(out).read_metrics()
    for key in ("rm_accuracy", "hidden_score_sft", "hidden_score_policy", "kl_to_reference"):
        assert isinstance(summary[key], float), key
    assert (out / "config.yaml").read_text().count("kl_coef: 0.25") == 1  # the flag reached the ppo section
    import yaml

    chain_cfg = yaml.safe_load((out / "config.yaml").read_text())  # no stage default that no stage used
    assert not any(f in chain_cfg[section] for section, fields in CHAIN_FIELDS.items() for f in fields)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["stage"]) for r in rows] == [(1, "sft"), (2, "rm"), (3, "ppo")]
    for stage in ("sft", "rm", "ppo"):
        for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints"):
            assert (out / stage / name).exists(), (stage, name)
    ppo_cfg = (out / "ppo" / "config.yaml").read_text()
    assert f"policy: {out}/sft/model" in ppo_cfg and f"reward_model: {out}/rm/model" in ppo_cfg
    assert "seed: 3" in ppo_cfg

    # Every model the chain wrote loads with the lm API (plain from_pretrained directories).
    load_model(out / "sft" / "model")
    RewardModel.from_pretrained(out / "rm" / "model")
    load_model(out / "ppo" / "policy")
    ValueModel.from_pretrained(out / "ppo" / "value")

    # Running it again finds every stage finished with the same config and trains nothing.
    mtime = (out / "ppo" / "policy" / "model.safetensors").stat().st_mtime_ns
    assert main(["rlhf", "--config", str(cfg), "--out", str(out), "--ppo.kl-coef", "0.25"]) == 0
    assert (out / "ppo" / "policy" / "model.safetensors").stat().st_mtime_ns == mtime
    again = json.loads((out / "summary.json").read_text())
    assert {k: v for k, v in again.items() if k != "wall_s"} == {k: v for k, v in summary.items() if k != "wall_s"}
    # the stages' rows (with the wall time each took to train) are kept, not replaced by the rerun's lookups
    assert RunDir(out).read_metrics() == rows
    assert again["train_wall_s"] == sum(row["wall_s"] for row in rows) > again["wall_s"]

    # `gradascent resume OUT` continues a chain too (it has no checkpoint of its own): here the PPO stage is
    # gone, so it trains PPO again and leaves the finished SFT and RM stages alone.
    import shutil

    shutil.rmtree(out / "ppo")
    sft_weights = (out / "sft" / "model" / "model.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["resume", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"{out}: finished.")
    assert (out / "ppo" / "policy" / "model.safetensors").exists()
    assert (out / "sft" / "model" / "model.safetensors").stat().st_mtime_ns == sft_weights

    # A changed stage config with the same out directory is refused rather than mixed with the old run.
    before = {name: (out / name).read_text() for name in ("config.yaml", "metrics.jsonl", "summary.json")}
    line = cli_error(capsys, "rlhf", "--config", str(cfg), "--out", str(out), "--ppo.kl-coef", "0.5")
    assert "holds a finished stage run with another config (kl_coef 0.25 there, 0.5 here)" in line
    assert {name: (out / name).read_text() for name in before} == before  # refused before writing anything


def test_a_chain_on_a_file_of_pairs_reports_reward_model_scores(tmp_path, capsys):
    # A JSONL task has no hidden rule to judge the policy by: the summary line gives the reward model's
    # scores instead (it used to crash formatting the missing hidden score).
    rows = [{"prompt": f"Say {w}:", "chosen": f" {w} {w}", "rejected": f" {w[::-1]}"} for w in
            ("cat", "dog", "sun", "sky", "red", "tea", "pen", "box") * 4]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "rlhf.yaml"
    cfg.write_text(TINY.replace("  n_train: 64\n  n_eval: 8\n", "").replace("  train_pairs: 32\n  eval_pairs: 16\n", ""))
    out = tmp_path / "run"
    assert main(["rlhf", "--config", str(cfg), "--out", str(out), "--task", str(data)]) == 0
    line = capsys.readouterr().out
    assert "reward-model score of greedy completions SFT" in line and "no hidden score" in line
    summary = json.loads((out / "summary.json").read_text())
    assert summary["hidden_score_sft"] is None and isinstance(summary["rm_score_policy"], float)


def test_a_task_without_pairs_is_refused_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "run"
    line = cli_error(capsys, "rlhf", "--out", str(out), "--task", "arithmetic")
    assert "not preference pairs" in line
    assert not out.exists()


def test_a_yaml_section_keeps_the_chain_defaults_it_does_not_set(tmp_path):
    from gradascent.algos.rlhf import RLHFConfig
    from gradascent.run.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("sft:\n  steps: 7\nrm:\n  lr: 0.002\n")
    from_yaml = load_config(RLHFConfig, path)
    from_flags = load_config(RLHFConfig, None, flag_overrides={"sft.steps": "7", "rm.lr": "0.002"})
    assert from_yaml == from_flags
    assert (from_yaml.sft.steps, from_yaml.sft.lr, from_yaml.sft.n_train) == (7, 3e-3, 2000)  # chain defaults kept
    assert (from_yaml.rm.lr, from_yaml.rm.train_pairs) == (0.002, 6000)


def test_fields_the_chain_connects_cannot_be_set(tmp_path, capsys):
    line = cli_error(capsys, "rlhf", "--out", str(tmp_path / "x"), "--ppo.policy", "elsewhere")
    assert "config key 'ppo.policy' (a flag) is set by the rlhf chain" in line


def test_a_section_check_names_its_key_with_the_section(tmp_path, capsys):
    line = cli_error(capsys, "rlhf", "--out", str(tmp_path / "x"), "--ppo.minibatch-size", "5")
    assert "config key 'ppo.minibatch_size': 5 is not allowed" in line
    assert not (tmp_path / "x").exists()


def test_ppo_batches_that_do_not_split_over_the_processes_stop_the_chain_before_sft(tmp_path, capsys, monkeypatch):
    # On 2 processes PPO's global minibatch of 3 cannot be split; the chain must say so before SFT trains.
    from gradascent.run import distributed

    monkeypatch.setattr(distributed, "info", lambda: distributed.DistInfo(rank=0, world_size=2))
    cfg = tmp_path / "rlhf.yaml"
    cfg.write_text(TINY.replace("  batch_size: 8\n  minibatch_size: 4", "  batch_size: 6\n  minibatch_size: 3"))
    out = tmp_path / "run"
    line = cli_error(capsys, "rlhf", "--config", str(cfg), "--out", str(out))
    assert "config key 'minibatch_size': 3 is not allowed; expected a multiple of the world size 2" in line
    assert not (out / "sft").exists()


def test_the_chain_does_not_take_over_another_trainers_run(tmp_path, capsys):
    # A directory holding a GRPO run (run.json names GRPOConfig): refused before anything is written there.
    out = tmp_path / "grpo-run"
    out.mkdir()
    run_json = '{"config_class": "gradascent.algos.grpo:GRPOConfig"}\n'
    (out / "run.json").write_text(run_json)
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    cfg = tmp_path / "rlhf.yaml"
    cfg.write_text(TINY)
    line = cli_error(capsys, "rlhf", "--config", str(cfg), "--out", str(out))
    assert "holds a run of GRPOConfig (run.json), not of RLHFConfig" in line
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", "run.json"]
    assert (out / "run.json").read_text() == run_json


def test_a_chain_spelt_another_way_or_moved_reruns_and_resumes(tmp_path, capsys, monkeypatch):
    import shutil

    cfg = tmp_path / "rlhf.yaml"
    cfg.write_text(TINY)
    monkeypatch.chdir(tmp_path)
    assert main(["rlhf", "--config", str(cfg), "--out", "run"]) == 0
    weights = tmp_path / "run" / "ppo" / "policy" / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    # The same chain named by its absolute path: every stage is found finished, nothing trains again.
    assert main(["rlhf", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 0
    assert weights.stat().st_mtime_ns == mtime
    # Moved, with the reward-model and PPO stages unfinished: the reward model resumes from its checkpoint
    # (whose config names the SFT model at the old place), PPO trains, and the configs follow the move.
    shutil.move(tmp_path / "run", tmp_path / "moved")
    for stage in ("rm", "ppo"):
        (tmp_path / "moved" / stage / "summary.json").unlink()
    assert main(["rlhf", "--config", str(cfg), "--out", "moved"]) == 0
    rm_cfg = (tmp_path / "moved" / "rm" / "config.yaml").read_text()
    assert "model: moved/sft/model\n" in rm_cfg and "out: moved/rm\n" in rm_cfg
    assert "policy: moved/sft/model\n" in (tmp_path / "moved" / "ppo" / "config.yaml").read_text()
    assert json.loads((tmp_path / "moved" / "summary.json").read_text())["policy_dir"] == "moved/ppo/policy"
    # A real change is still refused, after a move as before it.
    line = cli_error(capsys, "rlhf", "--config", str(cfg), "--out", str(tmp_path / "moved"), "--rm.lr", "0.5")
    assert "holds a finished stage run with another config (lr 0.001 there, 0.5 here)" in line


@pytest.mark.parametrize("flags, named", [
    (["--sft.model", "/no/such/model"], "model directory /no/such/model does not exist"),
    (["--rm.max-length", "5"], "more than max_length=5"),
    (["--ppo.max-new-tokens", "600"], "max_new_tokens=600 leaves no room for a prompt in the policy's context of 512"),
    (["--ppo.reference", "/no/such/reference"], "model directory /no/such/reference does not exist"),
    (["--ppo.lora-r", "2", "--ppo.reference", "elsewhere"], "with LoRA the reference is the policy's base weights"),
])
def test_every_stage_input_is_checked_before_the_first_stage_trains(tmp_path, capsys, flags, named):
    cfg = tmp_path / "rlhf.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "run"
    line = cli_error(capsys, "rlhf", "--config", str(cfg), "--out", str(out), *flags)
    assert named in line
    assert not out.exists()  # nothing trained, nothing written


def test_a_reference_that_the_sft_stage_makes_is_not_required_up_front(tmp_path):
    cfg = tmp_path / "rlhf.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "run"
    assert main(["rlhf", "--config", str(cfg), "--out", str(out), "--ppo.reference", str(out / "sft" / "model")]) == 0
    assert f"reference: {out}/sft/model" in (out / "ppo" / "config.yaml").read_text()
