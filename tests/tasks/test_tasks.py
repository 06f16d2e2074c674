"""Built-in tasks, their reward functions on canned strings, and JSONL task files (good and bad)."""

import json
import re

import pytest

from gradascent.errors import ConfigError, DataError
from gradascent.rewards import score
from gradascent.tasks import (
    arithmetic_dataset,
    exact_match,
    format_number,
    load_task,
    preference_pairs,
    preference_reward,
    preference_score,
    sft_example,
    split_rows,
)
from gradascent.tasks.arithmetic import solve
from gradascent.tasks.data import detect_format, read_jsonl


def test_arithmetic_rows_are_correct_and_seeded():
    rows = arithmetic_dataset(300, seed=3)
    assert rows == arithmetic_dataset(300, seed=3) and rows != arithmetic_dataset(300, seed=4)
    for r in rows:
        m = re.fullmatch(r"(\d+)([+-])(\d+)=", r["prompt"])
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        assert 0 <= a <= 99 and 0 <= b <= 99
        assert r["answer"] == str(a + b if op == "+" else a - b)
    assert {r["prompt"][-1] for r in rows} == {"="}
    assert any(r["answer"].startswith("-") for r in rows)  # subtraction below zero occurs
    assert solve(12, "-", 47) == -35 and solve(6, "*", 7) == 42


def test_exact_match_on_canned_strings():
    completions = ["19", " 19\n", "19.", "", "019", "-35", "35", "19 19", "<unk>"]
    answers = ["19", "19", "19", "19", "19", "-35", "-35", "19", "19"]
    # Reasoning: surrounding whitespace is stripped (rows 0-1 match); anything else must be identical:
    # a trailing dot, an empty string, a leading zero, a lost sign, a repetition and garbage all score 0.
    assert exact_match([""] * 9, completions, answer=answers) == [1, 1, 0, 0, 0, 1, 0, 0, 0]


def test_format_number_on_canned_strings():
    completions = ["19", "-3", " 7 ", "abc", "", "1 2", "1.5", "--1"]
    assert format_number([""] * 8, completions) == [1, 1, 1, 0, 0, 0, 0, 0]


def test_task_rewards_combine_through_the_rewards_api():
    task = load_task("arithmetic", n_train=10, n_eval=5)
    total, metrics = score(task.reward_fns, ["1+1=", "2+2="], ["2", "five"], {"answer": ["2", "4"]},
                           task.reward_weights)
    # Row 0: exact (1.0) + format (0.1 * 1); row 1: neither.
    assert total.tolist() == pytest.approx([1.1, 0.0])
    assert metrics == {"reward/exact_match": 0.5, "reward/format_number": 0.5}


def test_preference_score_by_hand():
    # (distinct positive - negative - unknown) / words; empty -> -1.
    assert preference_score("good great bad") == pytest.approx((2 - 1) / 3)
    assert preference_score("good good good") == pytest.approx(1 / 3)  # a repeated positive word counts once
    assert preference_score(" Good GREAT ") == 1.0  # case-insensitive, whitespace-split
    assert preference_score("the cat") == 0.0
    assert preference_score("xyz") == -1.0  # unknown words count against
    assert preference_score("bad sad") == -1.0
    assert preference_score("") == -1.0 and preference_score("   \n") == -1.0
    assert preference_score("good, great") == 0.0  # "good," is not a task word: (1 - 1) / 2
    assert preference_reward(["p"] * 3, ["", "kind calm", "!!"]) == [-1.0, 1.0, -1.0]


def test_preference_pairs_prefer_the_higher_score():
    rows = preference_pairs(200, seed=1, min_gap=0.2)
    assert rows == preference_pairs(200, seed=1)
    for r in rows:
        assert r["prompt"].startswith("Describe the ") and r["prompt"].endswith(":")
        assert preference_score(r["chosen"]) >= preference_score(r["rejected"]) + 0.2 - 1e-12
    assert sft_example(rows[0]) == (rows[0]["prompt"], rows[0]["chosen"])


def test_pairs_show_repeated_words_so_a_reward_model_can_learn_what_they_earn():
    # Uniform draws from the 34 words almost never repeat a positive word; a quarter of the words here copy
    # one already drawn, so that pairs teach that a repeat earns nothing (PPO otherwise found the reward
    # model's over-rating of "good good good good").
    import random

    from gradascent.tasks.preference import POSITIVE, random_completion

    rng = random.Random(0)
    words = [random_completion(rng).split() for _ in range(4000)]
    n_words = sum(len(w) for w in words)
    repeats = sum(len(w) - len(set(w)) for w in words)
    assert 0.18 < repeats / n_words < 0.30, repeats / n_words  # 0.226 here; uniform draws give 0.055
    with_positive_repeat = sum(any(w.count(p) > 1 for p in POSITIVE) for w in words)
    assert with_positive_repeat > 400  # 721 here; uniform draws give 210 (5% of completions)
    assert all(3 <= len(w) <= 6 for w in words)


def test_builtin_tasks():
    task = load_task("arithmetic", n_train=50, n_eval=20, seed=2)
    assert task.kind == "answer" and len(task.train) == 50 and len(task.eval) == 20
    assert not {r["prompt"] for r in task.eval} & {r["prompt"] for r in task.train}
    assert task.max_new_tokens == 5  # at most 3 characters (198, -99) plus the EOS token and one spare
    pref = load_task("preference", n_train=30, n_eval=10)
    assert pref.kind == "preference" and pref.reward_fns == (preference_reward,)
    with pytest.raises(ConfigError, match="neither a built-in task"):
        load_task("arithmatic")


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_jsonl_formats_and_split(tmp_path):
    f = _write(tmp_path / "a.jsonl", [json.dumps({"prompt": f"{i}+1=", "answer": i + 1}) for i in range(20)] + [""])
    assert detect_format(f) == "answer"
    task = load_task(str(f), seed=0, eval_fraction=0.25)
    assert task.kind == "answer" and len(task.train) + len(task.eval) == 20 and task.eval
    assert task.train[0]["answer"] == str(int(task.train[0]["prompt"].split("+")[0]) + 1)  # numbers become text
    assert task.reward_fns == (exact_match, format_number)
    p = _write(tmp_path / "p.jsonl", [json.dumps({"prompt": "x", "chosen": "a", "rejected": "b", "id": 7})])
    task = load_task(str(p))
    assert task.kind == "preference" and task.train[0]["id"] == 7 and task.eval == []
    c = _write(tmp_path / "c.jsonl", [json.dumps({"prompt": "x", "completion": "y"})])
    assert load_task(str(c)).kind == "completion" and load_task(str(c)).reward_fns == ()
    ev = _write(tmp_path / "ev.jsonl", [json.dumps({"prompt": "1+1=", "answer": "2"})])
    assert load_task(str(f), eval_file=str(ev)).eval == [{"prompt": "1+1=", "answer": "2"}]


def test_split_rows_by_hand():
    rows = [{"prompt": str(i)} for i in range(3)]
    train, evals = split_rows(rows, 0.0, seed=0)
    assert len(train) == 3 and evals == []
    train, evals = split_rows(rows, 1.0, seed=0)  # everything drawn for eval: one row is kept for training
    assert train == [rows[0]] and evals == rows[1:]
    train, evals = split_rows(rows[:1], 0.5, seed=0)
    assert train == rows[:1] and evals == []


def test_malformed_jsonl_names_file_and_line(tmp_path):
    good = json.dumps({"prompt": "1+1=", "answer": "2"})
    f = _write(tmp_path / "bad.jsonl", [good, "", '{"prompt": "2+2=", "answer": }'])
    with pytest.raises(DataError, match=r"bad\.jsonl:3: not valid JSON"):
        read_jsonl(f, ("prompt", "answer"))
    f = _write(tmp_path / "missing.jsonl", [good, json.dumps({"prompt": "2+2="})])
    with pytest.raises(DataError, match=r"missing\.jsonl:2: missing field 'answer'"):
        load_task(str(f))
    f = _write(tmp_path / "list.jsonl", [good, "[1, 2]"])
    with pytest.raises(DataError, match=r"list\.jsonl:2: expected a JSON object"):
        load_task(str(f))
    f = _write(tmp_path / "type.jsonl", [json.dumps({"prompt": ["a"], "answer": "2"})])
    with pytest.raises(DataError, match=r"type\.jsonl:1: field 'prompt' must be text"):
        load_task(str(f))
    f = _write(tmp_path / "noprompt.jsonl", [json.dumps({"question": "a", "answer": "b"})])
    with pytest.raises(DataError, match=r"noprompt\.jsonl:1: missing field 'prompt'"):
        load_task(str(f))


def test_empty_binary_and_missing_files(tmp_path):
    empty = _write(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(DataError, match="holds no examples"):
        load_task(str(empty))
    binary = tmp_path / "model.jsonl"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    with pytest.raises(DataError, match="binary file"):
        load_task(str(binary))
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"prompt": "a", "answer": "1"}\n{"prompt": "caf\xe9", "answer": "2"}\n')
    with pytest.raises(DataError, match=r"latin\.jsonl:2: not UTF-8"):
        load_task(str(latin))
    with pytest.raises(DataError, match="does not exist"):
        load_task(str(tmp_path / "nope.jsonl"))
    with pytest.raises(DataError, match="is a directory"):
        read_jsonl(tmp_path)


def test_a_file_of_prompts_alone_is_a_prompt_task_whose_other_fields_are_columns(tmp_path):
    rows = [{"prompt": f"q{i}", "topic": "t" * i} for i in range(10)]
    f = _write(tmp_path / "prompts.jsonl", [json.dumps(r) for r in rows])
    task = load_task(str(f), eval_fraction=0.2)
    assert task.kind == "prompt" and task.reward_fns == () and task.max_new_tokens == 64
    assert sorted(task.train + task.eval, key=lambda r: r["prompt"]) == rows  # nothing lost, columns kept
    assert task.eval and task.train  # split as any file is (split_rows)


def test_every_row_of_a_task_file_needs_the_first_rows_fields(tmp_path):
    # the fields become the reward functions' columns, so a row with more, fewer or other fields is an error
    # naming its line, also when a later row adds an answer to a file that began with a prompt alone
    for name, second in [("extra", {"prompt": "b", "topic": "x", "note": "y"}), ("fewer", {"prompt": "b"}),
                         ("answer", {"prompt": "b", "topic": "x", "answer": "2"})]:
        f = _write(tmp_path / f"{name}.jsonl", [json.dumps({"prompt": "a", "topic": "x"}), json.dumps(second)])
        with pytest.raises(DataError, match=rf"{name}\.jsonl:2: fields .* differ from the first row's "
                                            r"\(prompt, topic\)"):
            load_task(str(f))


def test_task_arguments_and_rows_built_in_python_are_checked(tmp_path):
    from pathlib import Path

    from gradascent.algos.ppo_rlhf import PromptSet
    from gradascent.algos.rlhf_data import preference_data
    from gradascent.tasks import Task

    f = tmp_path / "t.jsonl"
    f.write_text('{"prompt": "1+1=", "answer": 2}\n{"prompt": "", "answer": "4"}\n')
    with pytest.raises(DataError, match="t.jsonl:2: field 'prompt' is empty"):
        load_task(str(f))
    f.write_text('{"prompt": "1+1=", "answer": 2}\n{"prompt": "2+2=", "answer": "4"}\n')
    assert load_task(Path(f), eval_fraction=0.5).name == str(f)  # a path object, as a string would be
    with pytest.raises(ConfigError, match="eval_fraction must be in \\[0, 1\\), got 1.5"):
        load_task(str(f), eval_fraction=1.5)
    with pytest.raises(ConfigError, match="the built-in task 'arithmetic' draws its own eval rows"):
        load_task("arithmetic", eval_file=str(f))  # was silently ignored
    with pytest.raises(ConfigError, match="n_train must be an integer >= 1, got 0"):
        load_task("arithmetic", n_train=0)
    with pytest.raises(DataError, match="task 'mine': train row 0 has no 'prompt' field"):
        Task("mine", "answer", [{"question": "1+1="}], [])
    with pytest.raises(DataError, match="eval row 1 has prompt 12, not a non-empty string"):
        Task("mine", "answer", [], [{"prompt": "a"}, {"prompt": 12}])
    with pytest.raises(DataError, match="reward weight nan is not a finite number"):
        Task("mine", "answer", [{"prompt": "1+1="}], [], (exact_match,), (float("nan"),))
    # These were accepted, and failed mid-run without naming the task (or, for the kind, trained anyway).
    rows = [{"prompt": "1+1="}]
    with pytest.raises(DataError, match="task 'mine': max_new_tokens must be an int >= 1, got 0"):
        Task("mine", "answer", rows, [], max_new_tokens=0)
    with pytest.raises(DataError, match="task 'mine': reward function 'exact_match' is not callable"):
        Task("mine", "answer", rows, [], ("exact_match",))
    with pytest.raises(DataError, match="task 'mine': kind 'nonsense' is none of preference, completion"):
        Task("mine", "nonsense", rows, [])
    with pytest.raises(DataError, match="PromptSet.train is empty"):
        PromptSet(train=[], eval=["a"])
    one = tmp_path / "pref.jsonl"
    one.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    with pytest.raises(DataError, match="1 preference pair\\(s\\): too few to hold any out"):
        preference_data(str(one), 10, 10, seed=0)


def test_a_file_task_names_its_rows_by_line_and_a_copy_with_other_rows_by_number(tmp_path):
    import dataclasses

    from gradascent.tasks import load_task, row_names

    f = tmp_path / "t.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n" + ("\n" if i == 1 else "")
                         for i in range(6)))
    task = load_task(str(f), eval_fraction=0.5, seed=0)
    lines = {json.loads(line)["prompt"]: n for n, line in enumerate(f.read_text().splitlines(), 1) if line}
    for split, rows in (("train", task.train), ("eval", task.eval)):
        assert row_names(task, split) == [f"{f}:{lines[r['prompt']]}" for r in rows]  # line 4 follows a blank
    subset = dataclasses.replace(task, train=task.train[:1])  # as the demo copies tasks: names by number then
    assert row_names(subset, "train") == [f"{f} train row 1"]
    assert row_names(subset, "eval") == row_names(task, "eval")


def test_numbers_in_required_fields_keep_the_text_as_written(tmp_path):
    # str() of the parsed float rewrote answers ("2.50" -> "2.5", "1e5" -> "100000.0"), so exact_match could
    # never score the file's own answer; other fields stay numbers for the reward functions
    from gradascent.tasks import load_task, sft_example

    f = tmp_path / "num.jsonl"
    f.write_text('{"prompt": "2e5/2=", "answer": 1e5, "w": [1]}\n'
                 '{"prompt": "5/2=", "answer": 2.50, "w": [1.5, {"x": 2e0}]}\n'
                 '{"prompt": "1-1=", "answer": -0.0, "w": 1e-7}\n'
                 '{"prompt": "9+10=", "answer": 19, "w": 0}\n')
    task = load_task(str(f), eval_fraction=0.0)
    assert [sft_example(r)[1] for r in task.train] == ["1e5", "2.50", "-0.0", "19"]
    assert [r["w"] for r in task.train] == [[1], [1.5, {"x": 2.0}], 1e-7, 0]
    assert type(task.train[2]["w"]) is float and type(task.train[1]["w"][1]["x"]) is float


def test_a_line_ends_at_newline_only(tmp_path):
    # U+2028, U+2029 and U+0085 may stand unescaped in a JSON string; str.splitlines cut the row there
    f = tmp_path / "u.jsonl"
    rows = [{"prompt": f"a{sep}b", "answer": "1"} for sep in ("\u2028", "\u2029", "\u0085")]
    f.write_text("\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n", encoding="utf-8")
    assert read_jsonl(f) == rows


def test_a_jsonl_file_with_a_byte_order_mark_reads_as_without(tmp_path):
    # Some editors write one at the start of a UTF-8 file; json refused the first line ("Unexpected UTF-8 BOM")
    f = tmp_path / "bom.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + '{"prompt": "1+1=", "answer": "2"}\n{"prompt": "é", "answer": "3"}\n'.encode())
    assert read_jsonl(f, ("prompt", "answer")) == [{"prompt": "1+1=", "answer": "2"}, {"prompt": "é", "answer": "3"}]
