"""Reward functions API: weights, per-function metrics, built-ins, and errors naming function and sample."""

import math
import sys

import pytest
import torch

from gradascent.rewards import (
    RewardError,
    format_number,
    length_penalty_fn,
    metric_names,
    numeric_match,
    regex_reward,
    resolve_reward,
    score,
)


def test_builtins_on_canned_strings():
    comps = ["42", "the answer is 42", "41", "", "4 2", "-7"]
    assert numeric_match([""] * 6, comps, answer=[42, "42", 42, 42, 42, -7]) == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert format_number([""] * 6, comps) == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert length_penalty_fn(max_chars=4)(["", ""], ["abc", "abcdefgh"]) == [0.0, -1.0]
    assert regex_reward(r"<a>.*</a>")([""], [" <a>x</a> "]) == [1.0]


def test_weighted_total_and_per_function_metrics():
    total, metrics = score([numeric_match, format_number], ["p1", "p2"], ["5", "is 5"],
                           {"answer": [5, 5]}, weights=[1.0, 0.5])
    # sample 0: 1 + 0.5*1 = 1.5; sample 1: 1 + 0.5*0 = 1.0
    assert torch.equal(total, torch.tensor([1.5, 1.0]))
    assert metrics == {"reward/numeric_match": 1.0, "reward/format_number": 0.5}
    # A mean is taken in float64: one right of 50 is 0.02, not float32's 0.019999999552965164.
    _, metrics = score([numeric_match], ["p"] * 50, ["5"] + ["4"] * 49, {"answer": [5] * 50})
    assert metrics == {"reward/numeric_match": 0.02}


def test_bad_reward_functions_are_named():
    def raises(prompts, completions, **kw):
        raise KeyError("answer")

    def short(prompts, completions, **kw):
        return [1.0]

    def nan(prompts, completions, **kw):
        return [0.0, math.nan]

    def forgot_return(prompts, completions, **kw):
        [0.0 for _ in completions]

    def one_number(prompts, completions, **kw):
        return 0.5

    def by_index(prompts, completions, **kw):  # iterated, a dict gives its keys: rewards 0 and 1, silently
        return {i: 1.0 for i in range(len(completions))}

    def as_set(prompts, completions, **kw):  # members in no fixed order: rewards assigned to the wrong samples
        return {2.0, 1.0}

    for fn, message in [(raises, "'raises' raised KeyError"), (short, "'short' returned 1 values for 2"),
                        (by_index, "'by_index' returned a dict, not a list of 2 numbers in the order of the "
                                   "completions"),
                        (as_set, "'as_set' returned a set, not a list of 2 numbers"),
                        (nan, "'nan' returned nan for sample 1"),
                        (forgot_return, r"'forgot_return' returned None, not a list of 2 numbers"),
                        (one_number, r"'one_number' returned 0.5, not a list of 2 numbers")]:
        with pytest.raises(RewardError, match=message):
            score([fn], ["a", "b"], ["x", "y"])


def test_a_reward_spec_of_another_type_is_named():
    # It was "TypeError: expected string or bytes-like object" from the regex match.
    with pytest.raises(RewardError, match=r"reward function 3: a int, neither a callable nor a name"):
        resolve_reward(3)


def test_resolve_reward_specs(tmp_path):
    assert resolve_reward("numeric_match") is numeric_match
    from gradascent.tasks.arithmetic import exact_match  # the arithmetic task's reward, by name too

    assert resolve_reward("exact_match") is exact_match
    assert exact_match(["1+1="], [" 2\n", "02"][:1], answer=["2"]) == [1.0]
    f = tmp_path / "my_rewards.py"
    f.write_text("def shout(prompts, completions, **kw):\n    return [float(c.isupper()) for c in completions]\n")
    fn = resolve_reward(f"{f}:shout")
    assert fn(["", ""], ["AB", "ab"]) == [1.0, 0.0]
    with pytest.raises(RewardError, match="has no function 'whisper'"):
        resolve_reward(f"{f}:whisper")
    with pytest.raises(RewardError, match="importing no_such_module_xyz failed"):
        resolve_reward("no_such_module_xyz:f")
    with pytest.raises(RewardError, match="neither a built-in"):
        resolve_reward("exactish")


def test_a_module_in_the_current_directory_is_found_without_it_on_sys_path(tmp_path, monkeypatch):
    # the `gradascent` console script, unlike `python -m gradascent.cli`, does not put the current directory on
    # sys.path; the resolver looks there anyway, and leaves sys.path as it found it
    (tmp_path / "cwd_rewards_c3f1.py").write_text("def short(prompts, completions, **kw):\n"
                                                  "    return [float(len(c) < 3) for c in completions]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    before = list(sys.path)
    monkeypatch.delitem(sys.modules, "cwd_rewards_c3f1", raising=False)
    fn = resolve_reward("cwd_rewards_c3f1:short")
    assert fn(["", ""], ["ab", "abcd"]) == [1.0, 0.0]
    assert sys.path == before
    monkeypatch.delitem(sys.modules, "cwd_rewards_c3f1")  # not left behind for other tests


def test_builtins_with_an_argument_from_their_spec():
    # regex(PATTERN) matches the whole stripped completion; a ':' or ',' inside the pattern belongs to it
    apples = resolve_reward(r"regex(-?\d+ apples)")
    assert apples([""] * 4, ["12 apples", " -3 apples ", "apples", "12 apples!"]) == [1.0, 1.0, 0.0, 0.0]
    assert resolve_reward("regex((?:ab){1,2})")([""] * 3, ["ab", "abab", "ababab"]) == [1.0, 1.0, 0.0]
    # length_penalty(5): -(len - 5) / 5 above 5 characters: 3 chars -> 0, 10 chars -> -1, 8 chars -> -0.6
    short = resolve_reward("length_penalty(5)")
    assert short([""] * 3, ["abc", "abcdefghij", "abcdefgh"]) == pytest.approx([0.0, -1.0, -0.6])
    assert (apples.__name__, short.__name__) == (r"regex[-?\d+ apples]", "length_penalty[5]")  # metric names
    for spec, message in [("regex((", r"write it as regex\(ARGUMENT\)"), ("regex((a)", "not a valid regular"),
                          ("length_penalty(x)", "whole number"), ("length_penalty(0)", "whole number"),
                          ("nosuch(1)", r"no built-in 'nosuch\(...\)'")]:
        with pytest.raises(RewardError, match=message):
            resolve_reward(spec)


def test_numpy_and_tensor_values_count_and_functions_of_one_name_keep_their_own_metric():
    import numpy as np

    halves = lambda p, c, **k: [np.float32(0.5), torch.tensor(1.5)]  # noqa: E731
    ints = lambda p, c, **k: [np.int64(2), np.array([4])]  # noqa: E731
    total, metrics = score([halves, ints], ["a", "b"], ["x", "y"], weights=[2.0, 1.0])
    assert total.tolist() == [2 * 0.5 + 2, 2 * 1.5 + 4]
    assert metrics == {"reward/<lambda>": 1.0, "reward/<lambda>_2": 3.0}  # means of (0.5, 1.5) and (2, 4)
    with pytest.raises(RewardError, match="returned nan for sample 1"):
        score([lambda p, c, **k: [np.float32(1), np.float32("nan")]], ["a", "b"], ["x", "y"])
    with pytest.raises(RewardError, match="returned 1e\\+301 for sample 0.*finite float32"):  # inf in float32
        score([lambda p, c, **k: [1e301, 0.0]], ["a", "b"], ["x", "y"])

    def f(prompts, completions, **_):
        return [0.0] * len(completions)

    def f_2(prompts, completions, **_):
        return [1.0] * len(completions)

    # a second f must not take the name of the real f_2
    assert metric_names([f, f, f_2]) == ["f", "f_3", "f_2"]
    assert set(score([f, f, f_2], ["a"], ["x"])[1]) == {"reward/f", "reward/f_3", "reward/f_2"}


def test_a_reward_that_raises_is_named_with_the_sample_it_fails_on():
    def picky(prompts, completions, answer, **_):  # fails on a completion that is not a number
        return [float(int(c) == int(a)) for c, a in zip(completions, answer)]

    with pytest.raises(RewardError, match=r"'picky' raised ValueError: .*\(sample 2: prompt '3\+3=', "
                                          r"completion 'six'\)"):
        score([picky], ["1+1=", "2+2=", "3+3=", "4+4="], ["2", "4", "six", "eight"],
              {"answer": ["2", "4", "6", "8"]})

    def whole_batch_only(prompts, completions, **_):  # fails on batches, not on any one sample
        if len(completions) > 1:
            raise RuntimeError("batch too big")
        return [0.0]

    with pytest.raises(RewardError, match="on the batch of 2, not on any of its first 64 samples alone"):
        score([whole_batch_only], ["a", "b"], ["x", "y"])

    def from_tensor(prompts, completions, answer, **_):  # a column given as a tensor is sliced as a tensor
        return [1.0 / (a - 1) for a in answer.tolist()]

    with pytest.raises(RewardError, match=r"ZeroDivisionError.*\(sample 1: prompt 'b'"):
        score([from_tensor], ["a", "b", "c"], ["x", "y", "z"], {"answer": torch.tensor([3, 1, 2])})


def test_required_columns_are_the_parameters_without_defaults_after_the_first_two():
    from gradascent.rewards import check_columns, format_number, numeric_match, regex_reward, required_columns

    def mine(p, c, topic, *, level, bonus=1.0, **columns):
        return [0.0] * len(c)

    assert required_columns(numeric_match) == ["answer"]
    assert required_columns(format_number) == [] and required_columns(regex_reward(r"\d+")) == []
    assert required_columns(mine) == ["topic", "level"]
    assert required_columns(lambda prompts, completions, **_: []) == []
    check_columns([numeric_match, mine], ["answer", "topic", "level"], "rows")  # all there: no error
    with pytest.raises(RewardError, match="'mine' needs the column 'level', which the rows of my.jsonl lack "
                                          r"\(their columns besides 'prompt': answer, topic\)"):
        check_columns([numeric_match, mine], ["topic", "answer"], "my.jsonl")
