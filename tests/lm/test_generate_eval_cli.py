"""`gradascent generate` and `gradascent eval`: what they print is what the Python API returns, and bad input
is a one-line error."""

import json
from pathlib import Path

import pytest
import torch

from gradascent.algos.grpo import evaluate
from gradascent.cli import main
from gradascent.errors import ConfigError
from gradascent.lm import build_model, generate_text, load_model, save_model
from gradascent.lm.cli import evaluate_model
from gradascent.lm.tokenizers import char_tokenizer
from gradascent.rewards import format_number, numeric_match
from gradascent.tasks import arithmetic_task, load_task


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    tok = char_tokenizer()
    return save_model(build_model("qwen2-micro", tok, seed=3), tok, tmp_path_factory.mktemp("m") / "model")


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _lines(capsys) -> list[str]:
    return capsys.readouterr().out.splitlines()


def test_generate_prints_the_api_completions_grouped_by_prompt(model_dir, capsys):
    assert main(["generate", str(model_dir), "--prompt", "1+2=", "--prompt", "30+4=", "-n", "3",
                 "--max-new-tokens", "5", "--seed", "7", "--json"]) == 0
    printed = [json.loads(line) for line in _lines(capsys)]
    model, tok = load_model(model_dir)
    gen, texts = generate_text(model, tok, ["1+2=", "30+4="], max_new_tokens=5, num_samples=3,
                               generator=torch.Generator().manual_seed(7))
    assert [(r["prompt"], r["sample"]) for r in printed] == [(p, j) for p in ("1+2=", "30+4=") for j in range(3)]
    assert [r["completion"] for r in printed] == texts
    assert [r["tokens"] for r in printed] == gen.lengths.tolist()
    assert all(1 <= r["tokens"] <= 5 for r in printed)
    assert [r["logp"] for r in printed] == pytest.approx(gen.logp.sum(-1).tolist(), abs=1e-4)


def test_generate_reads_prompts_from_a_task_file(model_dir, tmp_path, capsys):
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "5+5=", "answer": "10"}, {"prompt": "6+1=", "answer": "7"},
                                         {"prompt": "9+9=", "answer": "18"}])
    assert main(["generate", str(model_dir), "--prompts-file", str(path), "--limit", "2", "--greedy",
                 "--max-new-tokens", "4"]) == 0
    lines = _lines(capsys)
    assert [line for line in lines if line.startswith("prompt")] == ['prompt 1: "5+5="', 'prompt 2: "6+1="']
    assert len(lines) == 4  # one greedy completion under each prompt


def test_eval_scores_rows_in_file_order_with_a_user_reward(model_dir, tmp_path, capsys):
    # the reward is the prompt's length, whatever the model writes: rows "a", "bbb", "cccccc" score 1, 3, 6
    (tmp_path / "lenreward.py").write_text(
        "def prompt_len(prompts, completions, **_):\n    return [float(len(p)) for p in prompts]\n")
    task = _jsonl(tmp_path / "t.jsonl", [{"prompt": p} for p in ("a", "bbb", "cccccc")])
    reward = f"{tmp_path / 'lenreward.py'}:prompt_len"
    assert main(["eval", str(model_dir), "--task", str(task), "--rewards", reward, "--max-new-tokens", "3",
                 "--json"]) == 0
    out = json.loads(_lines(capsys)[-1])
    assert (out["split"], out["rows"]) == ("all", 3)
    assert out["eval/prompt_len"] == pytest.approx(10 / 3)
    assert main(["eval", str(model_dir), "--task", str(task), "--rewards", reward, "--max-new-tokens", "3",
                 "--limit", "2", "--json"]) == 0
    assert json.loads(_lines(capsys)[-1])["eval/prompt_len"] == pytest.approx(2.0)  # (1 + 3) / 2


def test_eval_of_a_builtin_task_is_evaluate_on_its_held_out_rows(model_dir, capsys):
    assert main(["eval", str(model_dir), "--task", "arithmetic", "--limit", "16", "--json"]) == 0
    out = json.loads(_lines(capsys)[-1])
    task = arithmetic_task(seed=0)
    model, tok = load_model(model_dir)
    expected = evaluate(model, tok, task.eval[:16], list(task.reward_fns), task.max_new_tokens)
    assert (out["split"], out["rows"]) == ("eval", 16)
    assert {k: out[k] for k in expected} == pytest.approx(expected)
    assert set(expected) == {"eval/exact_match", "eval/format_number"}


@pytest.mark.parametrize("split", ["eval", "train"])
def test_eval_scores_the_rows_of_the_split_it_names(model_dir, tmp_path, capsys, split):
    # a reward that reads the prompt tells which rows were scored: the mean prompt length of the split's rows
    (tmp_path / "lenreward.py").write_text(
        "def prompt_len(prompts, completions, **_):\n    return [float(len(p)) for p in prompts]\n")
    reward = f"{tmp_path / 'lenreward.py'}:prompt_len"
    rows = [{"prompt": "x" * (i + 1), "answer": "1"} for i in range(40)]
    task_file = _jsonl(tmp_path / "t.jsonl", rows)
    for spec, task in [("arithmetic", arithmetic_task(seed=2)), (str(task_file), load_task(str(task_file), seed=2))]:
        assert main(["eval", str(model_dir), "--task", spec, "--split", split, "--seed", "2", "--limit", "24",
                     "--rewards", reward, "--max-new-tokens", "2", "--json"]) == 0
        out = json.loads(_lines(capsys)[-1])
        picked = (task.eval if split == "eval" else task.train)[:24]
        assert out["rows"] == len(picked) and len(picked) >= 2
        assert out["eval/prompt_len"] == pytest.approx(sum(len(r["prompt"]) for r in picked) / len(picked))


def test_eval_rewards_are_one_comma_separated_value_as_for_grpo(model_dir, tmp_path, capsys):
    # three rewards in one value; the comma inside regex(.{0,99}) belongs to its pattern, which any completion
    # of at most 2 characters matches (1.0); prompt_len scores the rows "a" and "bbb" 1 and 3, a mean of 2
    (tmp_path / "lenreward.py").write_text(
        "def prompt_len(prompts, completions, **_):\n    return [float(len(p)) for p in prompts]\n")
    task = _jsonl(tmp_path / "t.jsonl", [{"prompt": p, "answer": "1"} for p in ("a", "bbb")])
    rewards = f"{tmp_path / 'lenreward.py'}:prompt_len,regex(.{{0,99}}),numeric_match"
    # MODEL after --rewards: --rewards takes one value, it does not swallow the positional argument
    assert main(["eval", "--task", str(task), "--rewards", rewards, str(model_dir), "--max-new-tokens", "2",
                 "--json"]) == 0
    out = json.loads(_lines(capsys)[-1])
    assert [k for k in out if k.startswith("eval/")] == ["eval/prompt_len", "eval/regex[.{0,99}]",
                                                         "eval/numeric_match"]
    assert (out["eval/prompt_len"], out["eval/regex[.{0,99}]"]) == (2.0, 1.0)


def test_evaluate_model_is_what_eval_prints(model_dir, tmp_path, capsys):
    rows = [{"prompt": f"{i}+1=", "answer": str(i + 1)} for i in range(5)]
    task = str(_jsonl(tmp_path / "t.jsonl", rows))
    assert main(["eval", str(model_dir), "--task", task, "--limit", "3", "--rewards", "numeric_match,format_number",
                 "--max-new-tokens", "3", "--json"]) == 0
    printed = json.loads(_lines(capsys)[-1])
    out = evaluate_model(model_dir, task, limit=3, rewards="numeric_match,format_number", max_new_tokens=3)
    assert out == printed
    assert (out["task"], out["split"], out["rows"]) == (task, "all", 3)
    # the same from a loaded model, rewards as a list: evaluate on the file's first 3 rows in their order
    model, tok = load_model(model_dir)
    expected = evaluate(model, tok, rows[:3], [numeric_match, format_number], 3)
    assert evaluate_model(model, task, tokenizer=tok, limit=3, rewards=[numeric_match, "format_number"],
                          max_new_tokens=3) == {"task": task, "split": "all", "rows": 3, **expected}
    with pytest.raises(ConfigError, match="needs its tokenizer"):
        evaluate_model(model, task, rewards="numeric_match")
    with pytest.raises(ConfigError, match="split must be one of eval, train, all"):
        evaluate_model(model_dir, task, split="test")


def test_generate_temperature_zero_names_the_greedy_flag(model_dir, capsys):
    assert main(["generate", str(model_dir), "--prompt", "x", "--temperature", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "gradascent: error: --temperature must be > 0 (use --greedy for argmax decoding), got 0.0"


@pytest.mark.parametrize("argv, message", [
    (["generate", "{model}", "--max-new-tokens", "2"], "no prompts"),
    (["generate", "{model}", "--prompt", "x", "--limit", "2"], "--limit applies to the prompts of --prompts-file"),
    (["generate", "{model}", "--prompt", "x", "-n", "0"], "num_samples must be >= 1"),
    (["generate", "{model}", "--prompt", "x", "-n", "3", "--greedy"], "-n 3 would print it 3 times"),
    (["generate", "{model}", "--prompts-file", "{tmp}/missing.jsonl"], "does not exist"),
    (["generate", "{tmp}/no-model", "--prompt", "x"], "no-model"),
    (["eval", "{model}", "--task", "arithmetic", "--split", "all"], "split 'all' is for a file"),
    (["eval", "{model}", "--task", "arithmetic", "--limit", "0"], "limit must be >= 1, got 0"),
    (["eval", "{model}", "--task", "{tmp}/prefs.jsonl"], "fields chosen, prompt, rejected) has no reward"),
    (["eval", "{model}", "--task", "arithmetic", "--rewards", "no_such_reward"], "no_such_reward"),
    (["eval", "{model}", "--task", "arithmetic", "--rewards", ","], "rewards is empty: name at least one"),
    (["generate", "{model}", "--prompt", "x", "--seed", "-1"], "--seed must be an integer in [0, 2**32), got -1"),
    (["eval", "{model}", "--task", "arithmetic", "--seed", "-1"], "seed must be an integer in [0, 2**32), got -1"),
])
def test_bad_input_is_a_one_line_error(model_dir, tmp_path, capsys, argv, message):
    _jsonl(tmp_path / "prefs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    argv = [a.format(model=model_dir, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("gradascent: error:") and message in err[-1], err


def test_json_output_leaves_stderr_empty(model_dir):
    # --json is for programs: the weight-loading progress bar of transformers must not reach stderr either
    import os
    import subprocess
    import sys

    src = str(Path(__file__).resolve().parents[2] / "src")
    done = subprocess.run([sys.executable, "-m", "gradascent.cli", "generate", str(model_dir), "--prompt", "1+",
                           "--max-new-tokens", "3", "--json"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": src, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0 and done.stderr == ""
    assert json.loads(done.stdout)["prompt"] == "1+"


def test_loading_a_model_directory_prints_no_progress_bar_of_transformers(model_dir, capsys):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()  # as in a fresh process (saving the fixture's model turned it off)
    capsys.readouterr()
    assert main(["generate", str(model_dir), "--prompt", "1+2=", "--max-new-tokens", "2", "--greedy"]) == 0
    err = capsys.readouterr().err
    assert "Loading weights" not in err and "%|" not in err, err
