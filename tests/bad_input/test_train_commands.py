"""Bad input to every training command: one line naming the culprit, exit != 0, no traceback, and no
change to existing checkpoints. Each case runs the real command line in a subprocess."""

import json

import pytest
import torch

from gradascent.run import save_checkpoint

COMMANDS = ["sft", "rm", "ppo", "rlhf", "grpo"]


@pytest.mark.parametrize("cmd", COMMANDS)
def test_malformed_yaml(fails_cleanly, tmp_path, cmd):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("steps: [1, 2\nseed: 0\n")
    fails_cleanly([cmd, "--config", str(cfg), "--out", str(tmp_path / "o")], "bad.yaml")


@pytest.mark.parametrize("cmd", COMMANDS)
def test_unknown_key_suggests_the_right_one(fails_cleanly, tmp_path, cmd):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("sed: 1\n")
    line = fails_cleanly([cmd, "--config", str(cfg), "--out", str(tmp_path / "o")], "'sed'")
    assert "did you mean" in line


@pytest.mark.parametrize("cmd", ["sft", "grpo", "rl"])
def test_wrong_type(fails_cleanly, tmp_path, cmd):
    args = ["rl", "ppo", "--env", "CartPole-v1", "--seed", "many"] if cmd == "rl" else [cmd, "--seed", "many"]
    fails_cleanly(args + ["--out", str(tmp_path / "o")], "seed")


def test_truncated_jsonl_names_file_and_line(fails_cleanly, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2=", "ans')
    fails_cleanly(["sft", "--task", str(data), "--out", str(tmp_path / "o")], "train.jsonl:2")


def test_binary_file_as_data(fails_cleanly, tmp_path):
    data = tmp_path / "weights.jsonl"
    data.write_bytes(bytes(range(256)) * 8)
    fails_cleanly(["grpo", "--task", str(data), "--out", str(tmp_path / "o")], "weights.jsonl")


def test_prompts_alone_are_no_sft_data_and_need_rewards_in_grpo(fails_cleanly, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "note": "x"}) + "\n" for i in range(5)))
    line = fails_cleanly(["sft", "--task", str(data), "--out", str(tmp_path / "o")], "prompts alone")
    assert "note, prompt" in line and "'completion' or an 'answer'" in line
    fails_cleanly(["grpo", "--task", str(data), "--model", "qwen2-micro", "--out", str(tmp_path / "g")],
                  "set 'rewards'")


def test_a_prompt_too_long_for_the_context_stops_grpo_before_its_first_step(fails_cleanly, tmp_path):
    # qwen2-micro has a 512-token context and the character tokenizer: row 21 (600 characters) cannot fit with
    # 8 new tokens; before this check the run trained until the step that drew it
    rows = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(30)]
    rows[21]["prompt"] = "1" * 598 + "+1="
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "o"
    line = fails_cleanly(["grpo", "--task", str(data), "--model", "qwen2-micro", "--max-new-tokens", "8",
                          "--out", str(out)], "long.jsonl")
    assert "is 601 tokens long, more than the 504 that fit" in line and "model context 512" in line
    assert not out.exists()  # nothing written before the data was checked


def test_grpo_refuses_an_empty_builtin_task(fails_cleanly, tmp_path):
    fails_cleanly(["grpo", "--n-train", "0", "--out", str(tmp_path / "o")], "n_train")


def test_sft_examples_longer_than_the_context(fails_cleanly, tmp_path):
    data = tmp_path / "long.jsonl"
    data.write_text("".join(json.dumps({"prompt": "x" * n, "completion": "y"}) + "\n" for n in (5, 600, 700, 6)))
    line = fails_cleanly(["sft", "--task", str(data), "--model", "qwen2-micro", "--max-length", "1024",
                          "--out", str(tmp_path / "o")], "long.jsonl")
    assert "more than the model's context of 512 tokens" in line
    assert not (tmp_path / "o").exists()  # checked before the run directory is made


def test_sft_eval_prompts_that_leave_no_room_for_their_completions(fails_cleanly, tmp_path):
    # 508-token examples fit the 512-token context, but greedy evaluation completes a 506-token prompt with the
    # file's budget of 8 tokens: 514 positions
    data = tmp_path / "edge.jsonl"
    data.write_text("".join(json.dumps({"prompt": "x" * 506, "answer": "1"}) + "\n" for _ in range(20)))
    line = fails_cleanly(["sft", "--task", str(data), "--model", "qwen2-micro", "--max-length", "512",
                          "--out", str(tmp_path / "o")], "edge.jsonl")
    assert "eval prompts completed by eval_generate" in line and "more than the 504 that fit" in line


def test_empty_dataset(fails_cleanly, tmp_path):
    data = tmp_path / "empty.jsonl"
    data.write_text("\n")
    fails_cleanly(["sft", "--task", str(data), "--out", str(tmp_path / "o")], "empty.jsonl")


def test_preference_rows_with_chosen_equal_rejected(fails_cleanly, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": "p", "chosen": c, "rejected": r}) + "\n"
                            for c, r in [("a", "b"), ("same", "same"), ("c", "d")]))
    fails_cleanly(["rm", "--data", str(data), "--model", "qwen2-micro", "--out", str(tmp_path / "o")], "pairs.jsonl")


@pytest.mark.parametrize("args", [["sft", "--model"], ["grpo", "--model"], ["ppo", "--policy"], ["rm", "--model"]])
def test_missing_model_directory(fails_cleanly, tmp_path, args):
    missing = tmp_path / "no_model_here"
    missing.mkdir()
    extra = ["--reward-model", str(missing)] if args[0] == "ppo" else []
    fails_cleanly(args + [str(missing), *extra, "--out", str(tmp_path / "o")], "no_model_here")


def test_reward_function_that_raises(fails_cleanly, tmp_path):
    mod = tmp_path / "my_rewards.py"
    mod.write_text("def boom(prompts, completions, **kw):\n    raise RuntimeError('kaput')\n")
    fails_cleanly(["grpo", "--model", "qwen2-micro", "--rewards", f"{mod}:boom", "--steps", "1",
                   "--prompts-per-step", "2", "--group-size", "2", "--out", str(tmp_path / "o")], "boom")


@pytest.mark.parametrize("cmd", ["sft", "grpo"])
def test_corrupt_checkpoint_on_resume_is_left_alone(fails_cleanly, tmp_path, cmd):
    out = tmp_path / "run"
    ckpt = save_checkpoint(out / "checkpoints", 2, {"w": torch.ones(64)})
    (ckpt / "tensors.safetensors").write_bytes((ckpt / "tensors.safetensors").read_bytes()[:30])
    (ckpt / "state.json").write_text('{"step": 2, "state": {"w": {"__tens')
    fails_cleanly([cmd, "--model", "qwen2-micro", "--out", str(out), "--resume"], "checkpoint",
                  protect=out / "checkpoints")


def test_rl_unknown_environment_and_bad_hyperparameters(fails_cleanly, tmp_path):
    fails_cleanly(["rl", "ppo", "--env", "NoSuchEnv-v9", "--out", str(tmp_path / "o")], "NoSuchEnv-v9")
    fails_cleanly(["rl", "ppo", "--env", "CartPole-v1", "--clip-eps", "1.5", "--out", str(tmp_path / "o")], "clip")


@pytest.mark.parametrize("cmd", ["sft", "grpo"])
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_a_learning_rate_that_is_not_finite_is_refused_before_the_run_starts(fails_cleanly, tmp_path, cmd, value):
    # lr > 0 holds for inf: before, such a run started, turned the weights to NaN at its first update and
    # left a metrics.jsonl behind that blocked the corrected rerun.
    out = tmp_path / "o"
    line = fails_cleanly([cmd, "--model", "qwen2-micro", "--lr", value, "--out", str(out)], "'lr'")
    assert "finite" in line
    assert not out.exists()


@pytest.mark.parametrize("cmd", ["sft", "grpo", "rm", "ppo"])
def test_a_device_torch_cannot_name_or_this_machine_lacks(fails_cleanly, tmp_path, cmd):
    model = ["--policy", "qwen2-micro", "--reward-model", "qwen2-micro"] if cmd == "ppo" else ["--model", "qwen2-micro"]
    fails_cleanly([cmd, *model, "--device", "gpu0", "--out", str(tmp_path / "o")], "'gpu0'")
    if not torch.cuda.is_available():
        fails_cleanly([cmd, *model, "--device", "cuda", "--out", str(tmp_path / "o")], "'cuda'")
    assert not (tmp_path / "o").exists()


def test_rm_checks_its_model_and_pairs_before_making_the_run_directory(fails_cleanly, tmp_path):
    out = tmp_path / "o"
    fails_cleanly(["rm", "--model", "nonexist", "--out", str(out)], "'nonexist'")
    fails_cleanly(["rm", "--model", "qwen2-micro", "--max-length", "2", "--out", str(out)], "max_length=2")
    assert not out.exists()


def test_an_empty_prompt_stops_grpo_before_the_run_directory_is_made(fails_cleanly, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "answer": "2"}) + "\n" for p in ["1+1=", "", "0+2="] * 4))
    out = tmp_path / "o"
    line = fails_cleanly(["grpo", "--model", "qwen2-micro", "--task", str(data), "--out", str(out)], "is empty")
    assert "prompts.jsonl" in line
    assert not out.exists()


def test_a_reward_needing_a_column_the_task_file_lacks_stops_grpo_before_it_starts(fails_cleanly, tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1=", "topic": "sums"}) + "\n" for i in range(8)))
    out = tmp_path / "o"
    line = fails_cleanly(["grpo", "--model", "qwen2-micro", "--task", str(data), "--rewards", "numeric_match",
                          "--out", str(out)], "'numeric_match' needs the column 'answer'")
    assert "topic" in line
    assert not out.exists()


def test_rl_minibatches_log_std_and_eval_seed(fails_cleanly, tmp_path):
    # 3 minibatches of a 32 x 32 batch would be unequal, and 5000 would hold one sample each (whitening then
    # zeroes every advantage); a NaN starting log-std made the first update non-finite.
    out = str(tmp_path / "o")
    line = fails_cleanly(["rl", "ppo", "--env", "CartPole-v1", "--num-minibatches", "3", "--out", out],
                         "num_minibatches")
    assert "a divisor of the batch num_envs * num_steps = 1024" in line
    fails_cleanly(["rl", "ppo", "--env", "Pendulum-v1", "--init-log-std", "nan", "--out", out], "init_log_std")
    assert not (tmp_path / "o").exists()
    from gradascent.errors import ConfigError
    from gradascent.rl import evaluate  # the checks are the Python function's, which the command calls

    for kwargs, key in (({"seed": -1}, "seed"), ({"episodes": 0}, "episodes")):
        with pytest.raises(ConfigError, match=key):
            evaluate(out, **kwargs)


@pytest.mark.parametrize("args", [["sft", "--model", "qwen2-micro"], ["grpo", "--model", "qwen2-micro"],
                                  ["rm", "--model", "qwen2-micro"], ["rl", "reinforce", "--no-progress"],
                                  ["demo"]], ids=lambda a: a[0])
def test_empty_out_is_refused_and_the_working_directory_is_left_alone(fails_cleanly, tmp_path, args):
    # Path("") is the current directory: an empty --out used to write the whole run there
    before = sorted(p.name for p in tmp_path.iterdir())
    fails_cleanly(args + ["--out", ""], "(out) is empty")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("args", [["sft", "--model", "/no/such/model"], ["grpo", "--model", "/no/such/model"],
                                  ["rm", "--model", "/no/such/model"],
                                  ["ppo", "--policy", "/no/such/model", "--reward-model", "/no/such/rm"],
                                  ["rlhf", "--sft.model", "/no/such/model"]], ids=lambda a: a[0])
def test_a_file_in_the_way_of_out_is_named_before_anything_loads(fails_cleanly, tmp_path, args):
    # The model is missing too: the out check comes first, so the error names the file (it used to come
    # after the model and the data had loaded, or a model error hid it).
    (tmp_path / "afile").write_text("keep me\n")
    fails_cleanly(args + ["--out", str(tmp_path / "afile" / "run")], "a file is in the way")
    assert (tmp_path / "afile").read_text() == "keep me\n"


@pytest.mark.parametrize("args, must_name", [
    (["sft", "--model", "qwen2-micro", "--task", "{file}"], "{file}:5 is 602 tokens long"),
    (["sft", "--model", "qwen2-micro", "--task", "{file}", "--max-length", "1000"], "{file}:5 (eval example) is 602"),  # the split puts it in eval
    (["grpo", "--model", "qwen2-micro", "--task", "{file}"], "{file}:5 is 600 tokens long"),
    (["eval", "qwen2-micro", "--task", "{file}"], "{file}:5 is 600 tokens long"),
    (["generate", "qwen2-micro", "--prompts-file", "{file}"], "{file}:5 is 600 tokens long"),
    (["generate", "qwen2-micro", "--prompt", "1+1=", "--prompt", "x" * 600], "--prompt 2 is 600 tokens long"),
], ids=["sft-max-length", "sft-context", "grpo", "eval", "generate-file", "generate-flag"])
def test_a_prompt_too_long_is_named_by_its_file_and_line(fails_cleanly, tmp_path, args, must_name):
    # line 5 of the file, after a blank line: the 4th row, which every command used to name by a 0-based
    # index within its split ("example 0", "prompt 17") or not at all ("a prompt of 600 tokens")
    data = tmp_path / "rows.jsonl"
    rows = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(3)] + [{"prompt": "x" * 600, "answer": "1"}]
    lines = [json.dumps(r) for r in rows]
    data.write_text("\n".join(lines[:2] + [""] + lines[2:]) + "\n")
    args = [a.format(file=data) for a in args]
    if args[0] in ("sft", "grpo"):
        args += ["--out", str(tmp_path / "o")]
    fails_cleanly(args, must_name.format(file=data))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, blocked, is_file", [
    (["grpo", "--model", "qwen2-micro", "--steps", "1", "--prompts-per-step", "2", "--group-size", "2"], "model", True),
    (["sft", "--model", "qwen2-micro", "--steps", "1"], "summary.json", False),
    (["rl", "ppo", "--env", "CartPole-v1", "--total-steps", "256"], "tb", True),
    (["rl", "ppo", "--env", "CartPole-v1", "--total-steps", "256"], "policy.json", False),
], ids=["grpo-model", "sft-summary", "rl-tb", "rl-policy"])
def test_an_entry_of_the_run_directory_in_the_way_stops_the_run_before_it_trains(fails_cleanly, tmp_path, args,
                                                                               blocked, is_file):
    # A file where the final model/ or tb/ goes, or a directory where summary.json goes: a FileExistsError or
    # IsADirectoryError traceback once training had finished, and a stray summary.json.tmp.
    out = tmp_path / "o"
    out.mkdir()
    (out / blocked).write_text("keep me\n") if is_file else (out / blocked).mkdir()
    fails_cleanly(args + ["--out", str(out)], f"{out / blocked}: a {'file' if is_file else 'directory'} is in the way")
    assert sorted(p.name for p in out.iterdir()) == [blocked]  # nothing trained, nothing written
