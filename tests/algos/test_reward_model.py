"""Reward-model trainer: it learns the built-in preference task, saves a loadable model, refuses bad pairs."""

import dataclasses
import json
import math

import pytest
import torch

from _rlhf_fixtures import cli_error, rm_config, sft_dir, state_of  # noqa: F401  (fixtures)
from gradascent.algos.reward_model import pair_rewards, train_reward_model
from gradascent.algos.rlhf_data import PreferencePair, check_pairs, encode_sequences
from gradascent.errors import ConfigError, DataError
from gradascent.lm import RewardModel, char_tokenizer, load_model


def test_reward_model_learns_the_hidden_rule_and_saves_a_loadable_model(sft_dir, tmp_path):
    # 512 pairs, one epoch of 16 steps: a random-init micro model starts at chance (about 0.5 held-out
    # accuracy) and must end clearly above it on 128 held-out pairs of the built-in preference task.
    cfg = rm_config(sft_dir, tmp_path / "rm", train_pairs=512, eval_pairs=128, log_every=4)
    before = state_of(RewardModel.from_pretrained(sft_dir, new_head=True)[0].backbone)
    summary = train_reward_model(cfg)
    assert summary["rm_accuracy"] >= 0.75, summary
    assert abs(summary["rm_accuracy_initial"] - 0.5) < 0.2  # started near chance: the learning is real

    rows = [json.loads(line) for line in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 4, 8, 12, 16]
    assert all(torch.isfinite(torch.tensor(r["rm_loss"])) for r in rows[1:])
    assert json.loads((tmp_path / "rm" / "summary.json").read_text())["rm_accuracy"] == summary["rm_accuracy"]

    # Every backbone parameter moved, and the saved model loads back and scores exactly as trained.
    model, tok = RewardModel.from_pretrained(tmp_path / "rm" / "model")
    after = state_of(model.backbone)
    assert not [k for k in before if torch.equal(before[k], after[k])]
    pair = [PreferencePair("Describe the cat:", " good kind calm", " bad sad dull", where="t")]
    with torch.no_grad():
        rc, rr = pair_rewards(model, tok, pair, 64, torch.device("cpu"))
    assert rc.shape == rr.shape == (1,)
    # The saved backbone is also a plain causal LM directory (PPO can start a policy or critic from it).
    load_model(tmp_path / "rm" / "model")


def test_margin_and_centring_reach_the_loss(sft_dir, tmp_path):
    # Same data and seed; a huge centring weight changes the first step's loss, so it is applied.
    plain = train_reward_model(rm_config(sft_dir, tmp_path / "a", train_pairs=32, eval_pairs=8))
    centred = train_reward_model(rm_config(sft_dir, tmp_path / "b", train_pairs=32, eval_pairs=8, center_coef=10.0))
    first = lambda d: json.loads((tmp_path / d / "metrics.jsonl").read_text().splitlines()[1])["rm_loss"]
    assert first("b") > first("a") and plain["steps"] == centred["steps"] == 1
    # A margin column: m = 5 on every pair turns -log sigmoid(d) into -log sigmoid(d - 5), larger.
    data = tmp_path / "m.jsonl"
    rows = [{"prompt": "Describe the sun:", "chosen": " good warm", "rejected": " bad cold", "margin": 5}] * 20
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # Every pair is the same, so the first batch's loss is one pair's: log(1 + e^-d) without the margin, which
    # gives d back, and log(1 + e^(5 - d)) with it.
    no_m = train_reward_model(rm_config(sft_dir, tmp_path / "c", data=str(data), batch_size=4))
    with_m = train_reward_model(rm_config(sft_dir, tmp_path / "d", data=str(data), batch_size=4, use_margin=True))
    d = -math.log(math.expm1(first("c")))
    assert math.isclose(first("d"), math.log1p(math.exp(5.0 - d)), rel_tol=1e-5)
    assert no_m["steps"] == with_m["steps"]


def test_pairs_with_identical_or_empty_completions_are_refused():
    same = PreferencePair("p", " a b", " a b", where="pairs.jsonl:3")
    with pytest.raises(DataError, match=r"pairs.jsonl:3: chosen and rejected are the same text"):
        check_pairs([same])
    empty = PreferencePair("p", "", " a", where="pairs.jsonl:7")
    with pytest.raises(DataError, match=r"pairs.jsonl:7: the chosen completion is empty"):
        check_pairs([empty])


def test_sequences_are_prompt_completion_eos_right_padded():
    tok = char_tokenizer()
    ids, mask = encode_sequences(tok, ["ab", "a"], ["c", ""], add_eos=True)
    a, b, c = (tok.convert_tokens_to_ids(ch) for ch in "abc")
    eos, pad = tok.eos_token_id, tok.pad_token_id
    assert ids.tolist() == [[a, b, c, eos], [a, eos, pad, pad]]
    assert mask.tolist() == [[True] * 4, [True, True, False, False]]
    with pytest.raises(DataError, match="row 0: prompt and completion are 4 tokens, more than max_length=3"):
        encode_sequences(tok, ["ab"], ["c"], max_length=3)


@pytest.mark.parametrize("row, message", [
    ({"prompt": "Describe the cat:", "chosen": " good", "rejected": " good"}, "chosen and rejected are the same text"),
    ({"prompt": "Describe the cat:", "chosen": " good", "rejected": ""}, "the rejected completion is empty"),
])
def test_cli_bad_pairs_exit_2_with_one_line_naming_the_row(sft_dir, tmp_path, capsys, row, message):
    data = tmp_path / "pairs.jsonl"
    good = {"prompt": "Describe the dog:", "chosen": " kind", "rejected": " rude"}
    data.write_text(json.dumps(good) + "\n\n" + json.dumps(row) + "\n")
    line = cli_error(capsys, "rm", "--model", str(sft_dir), "--data", str(data), "--out", str(tmp_path / "out"))
    assert f"{data}:3: {message}" in line


def test_resume_from_a_middle_checkpoint_equals_the_uninterrupted_run(sft_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file

    cfg = rm_config(sft_dir, tmp_path / "a", train_pairs=96, eval_pairs=16, batch_size=16, log_every=3,
                    save_every=2, keep_last=5)
    train_reward_model(cfg)
    # The state of a run killed right after its checkpoint at step 4 (of 6): later checkpoints, the model
    # and the summary are gone, and metrics.jsonl still holds the row of step 6.
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step_00000006")
    shutil.rmtree(tmp_path / "b" / "model")
    (tmp_path / "b" / "summary.json").unlink()
    saved = tmp_path / "b" / "config.yaml"  # as an earlier version wrote it, with the keys' earlier names
    saved.write_text(saved.read_text().replace("save_every:", "checkpoint_every:").replace("keep_last:", "keep_checkpoints:"))
    train_reward_model(rm_config(sft_dir, tmp_path / "b", train_pairs=96, eval_pairs=16, batch_size=16, log_every=3,
                                 save_every=2, keep_last=5, resume=True))
    for name in ("model.safetensors", "head.safetensors"):
        a, b = load_file(str(tmp_path / "a" / "model" / name)), load_file(str(tmp_path / "b" / "model" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = lambda d: [{k: v for k, v in json.loads(line).items() if k != "wall_s"}
                      for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
    assert rows("a") == rows("b") and [r["step"] for r in rows("b")] == [0, 3, 6]


def test_pairs_the_tokenizer_cannot_tell_apart_are_refused_and_unknown_text_is_warned_about():
    from gradascent.algos.reward_model import check_lengths
    from gradascent.algos.rlhf_data import PreferencePair
    from gradascent.errors import DataError, GradascentWarning
    from gradascent.lm import char_tokenizer

    tok = char_tokenizer()  # printable ASCII: é, ü and ï are <unk>
    same = [PreferencePair("c:", "ok", "no", where="p.jsonl:1"), PreferencePair("a:", "é", "ü", where="p.jsonl:2")]
    with pytest.raises(DataError, match=r"p.jsonl:2: chosen 'é' and rejected 'ü' encode to the same tokens"):
        check_lengths(tok, same, 64)
    with pytest.warns(GradascentWarning, match=r"reward model pairs: 1 of 4 texts hold characters .* "
                                                r"\(the first: p.jsonl:2 \(chosen\), 'b:naïve'\)"):
        check_lengths(tok, [same[0], PreferencePair("b:", "naïve", "nai", where="p.jsonl:2")], 64)


def test_a_resume_on_an_edited_pairs_file_is_refused(sft_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"q{i}:", "chosen": "good " * (i % 3 + 1), "rejected": "bad"} for i in range(24)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = rm_config(sft_dir, tmp_path / "run", data=str(data), train_pairs=16, eval_pairs=8, batch_size=8,
                    save_every=1)
    train_reward_model(cfg)
    data.write_text("".join(json.dumps({**r, "rejected": "worse"}) + "\n" for r in rows))
    with pytest.raises(ConfigError, match=r"the training pairs of .*pairs.jsonl differ from the data the run was "
                                          "trained on"):
        train_reward_model(dataclasses.replace(cfg, resume=True))
