"""Presets, save/load round trips of policies and heads, tokenizer conventions, and bad model directories."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from gradascent.errors import CheckpointError, ConfigError, DataError
from gradascent.lm import (
    RewardModel,
    ValueModel,
    build_model,
    char_tokenizer,
    count_parameters,
    encode_prompts,
    ensure_pad_token,
    eos_token_ids,
    last_token_index,
    load_model,
    previous_token_index,
    load_tokenizer,
    preset_config,
    save_model,
)


def test_micro_preset_parameter_count_by_hand():
    # qwen2-micro: V=99, H=32, 2 layers, 4 heads of 8, 2 kv heads (16 wide), MLP 64, tied embeddings.
    # embedding 99*32 = 3168; per layer: q 32*32+32 = 1056, k and v 32*16+16 = 528 each, o 32*32 = 1024,
    # MLP 3*32*64 = 6144, two norms 64 -> 9344; 2 layers 18688; final norm 32. Total 21888.
    assert count_parameters(build_model("qwen2-micro")) == 21888
    # Llama has no q/k/v biases: 21888 - 2 * (32 + 16 + 16) = 21760.
    assert count_parameters(build_model("llama-micro")) == 21760


def test_benchmark_presets_are_near_their_names():
    for name, target in (("qwen2-5m", 5.5e6), ("qwen2-14m", 13.8e6)):
        with torch.device("meta"):  # count without allocating or initialising
            model = AutoModelForCausalLM.from_config(preset_config(name, vocab_size=99))
        assert abs(count_parameters(model) - target) < 0.1e6


def test_build_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    a, b, c = build_model("qwen2-micro", seed=1), build_model("qwen2-micro", seed=1), build_model("qwen2-micro", seed=2)
    assert torch.equal(torch.get_rng_state(), state)
    wa, wb, wc = (m.model.layers[0].mlp.up_proj.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_save_load_round_trip_with_plain_transformers_too(tmp_path):
    model, tok = load_model("llama-micro", seed=3)
    save_model(model, tok, tmp_path / "m")
    again, tok2 = load_model(tmp_path / "m")
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "m"))
    ids, mask = encode_prompts(tok, ["12+7=", "hello"])
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask.long()).logits
        assert torch.equal(again(input_ids=ids, attention_mask=mask.long()).logits, ref)
        assert torch.equal(plain(input_ids=ids, attention_mask=mask.long()).logits, ref)
    assert tok2("a+b")["input_ids"] == tok("a+b")["input_ids"]
    assert tok2.pad_token_id == 0 and tok2.eos_token_id == 1
    # The tokenizer's model_max_length is the model's context, saved and loaded with it.
    assert tok.model_max_length == tok2.model_max_length == model.config.max_position_embeddings == 512


@pytest.mark.parametrize("preset", ["qwen2-micro", "llama-micro"])
def test_saved_tokenizer_encodes_every_character_as_before(tmp_path, preset):
    # A qwen2 directory once reloaded as transformers' Qwen2Tokenizer, which dropped spaces and newlines.
    model, tok = load_model(preset)
    save_model(model, tok, tmp_path / "m")
    text = "Describe the sea: kind\nthe  sea 12+7=19"
    want = tok(text, add_special_tokens=False)["input_ids"]
    assert len(want) == len(text)
    for again in (load_tokenizer(tmp_path / "m"), load_model(tmp_path / "m")[1]):
        assert again(text, add_special_tokens=False)["input_ids"] == want
        assert again.decode(want) == text
        assert (again.pad_token_id, again.eos_token_id, len(again)) == (0, 1, 99)


def test_missing_directory_and_directory_without_model(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no model in"):
        load_model(tmp_path / "empty")
    with pytest.raises(ConfigError, match="neither a local directory nor a preset"):
        load_model("qwen2-huge")


def test_model_without_tokenizer_and_vocab_mismatch(tmp_path):
    model, tok = load_model("qwen2-micro")
    model.save_pretrained(str(tmp_path / "m"))
    with pytest.raises(CheckpointError, match="no tokenizer"):
        load_model(tmp_path / "m")
    bigger = char_tokenizer()
    bigger.add_tokens([f"<extra{i}>" for i in range(5)])  # 104 tokens for a 99-row embedding
    with pytest.raises(CheckpointError, match="vocabulary mismatch.*104.*99") as err:
        load_model(tmp_path / "m", tokenizer=bigger)
    assert f"mismatch of {tmp_path / 'm'}:" in str(err.value)  # which of a command's models is at fault


def test_weights_holding_nan_are_refused_when_the_model_loads(tmp_path):
    # Such a model sampled 64 <pad> tokens greedily and exited 0, or failed with torch's multinomial error, or
    # made SFT skip every step and then refuse to checkpoint, as if training had diverged.
    from safetensors.torch import load_file, save_file

    model, tok = load_model("qwen2-micro")
    save_model(model, tok, tmp_path / "m")
    weights = load_file(str(tmp_path / "m" / "model.safetensors"))
    weights["model.norm.weight"][3] = float("nan")
    save_file(weights, str(tmp_path / "m" / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"holds NaN or inf in weight 'model.norm.weight'"):
        load_model(tmp_path / "m")
    # A reward head holding NaN is refused too.
    RewardModel(load_model("qwen2-micro")[0]).save_pretrained(tmp_path / "rm", tok)
    save_file({"weight": torch.full((1, 32), float("nan")), "bias": torch.zeros(1)},
              str(tmp_path / "rm" / "head.safetensors"))
    with pytest.raises(CheckpointError, match=r"head.safetensors holds NaN or inf"):
        RewardModel.from_pretrained(tmp_path / "rm")


def test_corrupt_weights_are_a_checkpoint_error(tmp_path):
    model, tok = load_model("qwen2-micro")
    save_model(model, tok, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError):
        load_model(tmp_path / "m")


def test_pad_falls_back_to_eos_and_eos_ids_are_gathered(tmp_path):
    tok = char_tokenizer()
    tok.pad_token = None
    assert tok.pad_token_id is None
    ensure_pad_token(tok)
    assert tok.pad_token_id == tok.eos_token_id == 1
    model = build_model("qwen2-micro")
    model.generation_config.eos_token_id = [5, 1, 7]  # an int or a list in HF configs
    assert eos_token_ids(tok, model) == [1, 5, 7]
    # A saved tokenizer without pad loads with pad == eos.
    tok.save_pretrained(str(tmp_path / "t"))
    assert load_tokenizer(tmp_path / "t").pad_token_id == 1


def test_encode_prompts_left_pads_and_refuses_long_prompts():
    tok = char_tokenizer()
    ids, mask = encode_prompts(tok, ["1+1=", "12+34="])
    # "1+1=" is 4 characters, "12+34=" 6: the first row gets 2 pads on the left.
    assert mask.tolist() == [[False, False, True, True, True, True], [True] * 6]
    assert ids[0, :2].tolist() == [tok.pad_token_id] * 2
    assert tok.decode(ids[0, 2:].tolist()) == "1+1="
    with pytest.raises(DataError, match="prompt 1 is 6 tokens long"):
        encode_prompts(tok, ["1+1=", "12+34="], max_length=5)
    with pytest.raises(DataError, match="no prompts"):
        encode_prompts(tok, [])


def test_char_tokenizer_round_trips_text_and_maps_unknown_characters():
    tok = char_tokenizer()
    assert len(tok) == 99
    text = "Describe the cat: good\n\n  -35"
    assert tok.decode(tok(text)["input_ids"]) == text
    assert tok("a\té")["input_ids"] == [tok.convert_tokens_to_ids("a"), 2, 2]  # tab and é are <unk> (id 2)


def test_last_token_index_left_and_right_padding():
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert last_token_index(mask).tolist() == [3, 1, 3]


def test_previous_token_index_by_hand():
    # Row 0: left padding; row 1: a right-padded prompt [a, b, pad] followed by completion [c, d].
    mask = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 0, 1, 1]], dtype=torch.bool)
    assert previous_token_index(mask).tolist() == [[-1, -1, 1, 2, 3], [-1, 0, 1, 1, 3]]


def test_completion_values_read_the_state_before_each_token():
    backbone, tok = load_model("qwen2-micro", seed=6)
    vm = ValueModel(backbone)
    prompt, comp = tok("12+7=")["input_ids"], tok("19")["input_ids"]
    # Left-padded prompt, completion padded on the right with one unused slot.
    pi, pm = torch.tensor([[0] + prompt]), torch.tensor([[False] + [True] * 5])
    ci, cm = torch.tensor([comp + [0]]), torch.tensor([[True, True, False]])
    with torch.no_grad():
        v = vm.completion_values(pi, pm, ci, cm)
        full = vm(torch.tensor([prompt + comp]), torch.ones(1, 7, dtype=torch.bool))
    # Token "1" is sampled from the state after "=" (column 4 unpadded), "9" from the state after "1" (column 5).
    assert torch.allclose(v[0, :2], full[0, 4:6], atol=1e-5) and v[0, 2] == 0


@pytest.mark.parametrize("cls", [ValueModel, RewardModel])
def test_head_round_trip(tmp_path, cls):
    backbone, tok = load_model("qwen2-micro", seed=4)
    model = cls(backbone)
    ids, mask = encode_prompts(tok, ["12+7=19", "hi"])
    with torch.no_grad():
        before = model(ids, mask)
    model.save_pretrained(tmp_path / "h", tok)
    meta = json.loads((tmp_path / "h" / "head.json").read_text())
    assert meta == {"format": 1, "kind": cls.kind, "hidden_size": 32}
    again, tok2 = cls.from_pretrained(tmp_path / "h")
    with torch.no_grad():
        assert torch.equal(again(ids, mask), before)
    # The directory is also a plain causal LM: the backbone with its LM head.
    lm, _ = load_model(tmp_path / "h")
    assert torch.equal(lm.lm_head.weight, backbone.lm_head.weight)


def test_head_kind_and_presence_are_checked(tmp_path):
    backbone, tok = load_model("qwen2-micro")
    ValueModel(backbone).save_pretrained(tmp_path / "v", tok)
    with pytest.raises(CheckpointError, match="'value' head, not a 'reward' head"):
        RewardModel.from_pretrained(tmp_path / "v")
    save_model(backbone, tok, tmp_path / "plain")
    with pytest.raises(CheckpointError, match="no value head"):
        ValueModel.from_pretrained(tmp_path / "plain")
    with pytest.raises(CheckpointError, match="no reward head .*trained by `gradascent rm`"):
        RewardModel.from_pretrained(tmp_path / "plain")  # e.g. the SFT model given as --reward-model
    fresh, _ = ValueModel.from_pretrained(tmp_path / "plain", new_head=True)
    assert fresh.head.weight.shape == (1, 32)


def test_a_damaged_config_json_is_named(tmp_path):
    backbone, tok = load_model("qwen2-micro")
    save_model(backbone, tok, tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text("{bad")
    with pytest.raises(CheckpointError, match="config.json is not valid JSON"):
        load_model(tmp_path / "m")


def test_value_and_reward_shapes_and_padding_invariance():
    backbone, tok = load_model("qwen2-micro", seed=5)
    rm, vm = RewardModel(backbone), ValueModel(backbone)
    seq = tok("12+7=19")["input_ids"]
    n = len(seq)
    left = torch.tensor([[0, 0] + seq]), torch.tensor([[False, False] + [True] * n])
    right = torch.tensor([seq + [0, 0]]), torch.tensor([[True] * n + [False, False]])
    with torch.no_grad():
        r_left, r_right = rm(*left), rm(*right)
        v_left, v_right = vm(*left), vm(*right)
    assert r_left.shape == (1,) and v_left.shape == (1, n + 2)
    # The same tokens at the same positions score the same whatever the padding side.
    assert torch.allclose(r_left, r_right, atol=1e-5)
    assert torch.allclose(v_left[0, 2:], v_right[0, :n], atol=1e-5)


def test_freeze_lm_head_freezes_an_untied_head_only():
    from gradascent.lm import ValueModel
    from gradascent.lm.models import preset_config

    tied = ValueModel(build_model("qwen2-micro", seed=0))
    tied.freeze_lm_head()
    assert all(p.requires_grad for p in tied.parameters())  # the tied head is the embedding: still trained
    tok = char_tokenizer()
    cfg = preset_config("qwen2-micro", len(tok), tok.pad_token_id, tok.eos_token_id, 64)
    cfg.tie_word_embeddings = False
    untied = ValueModel(AutoModelForCausalLM.from_config(cfg))
    untied.freeze_lm_head()
    frozen = [n for n, p in untied.named_parameters() if not p.requires_grad]
    assert frozen == ["backbone.lm_head.weight"]


def test_damaged_configs_and_a_tokenizer_directory(tmp_path):
    import json
    import shutil

    from gradascent.errors import CheckpointError
    from gradascent.lm import load_model, save_model

    model, tok = load_model("qwen2-micro")
    good = save_model(model, tok, tmp_path / "good")
    listed = shutil.copytree(good, tmp_path / "listed")
    (listed / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="config.json holds a JSON list, not a model config"):
        load_model(listed)
    layers = shutil.copytree(good, tmp_path / "layers")
    cfg = json.loads((layers / "config.json").read_text())
    (layers / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": cfg["num_hidden_layers"] + 5}))
    with pytest.raises(CheckpointError, match=f"cannot load the (tokenizer|model) in {layers}"):
        load_model(layers)
    loaded, loaded_tok = load_model(good, tokenizer=str(good))  # a tokenizer given as its directory
    assert len(loaded_tok) == len(tok)


def test_a_config_that_does_not_fit_the_weights_is_one_line_without_the_load_report(tmp_path, capfd):
    model, tok = load_model("qwen2-micro")
    save_model(model, tok, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "intermediate_size": 128}))
    capfd.readouterr()
    with pytest.raises(CheckpointError, match=r"config.json and model.safetensors disagree: tensor "
                                              r"model.layers.0.mlp.down_proj.weight is \(32, 64\) in the file, "
                                              r"\(32, 128\) for the config"):
        load_model(tmp_path / "m")
    assert "LOAD REPORT" not in capfd.readouterr().err  # transformers' table came before our error


def test_tokenizer_and_context_read_the_config_as_transformers_maps_it(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from gradascent.lm.models import tokenizer_and_context

    tok = char_tokenizer()
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=16, n_layer=1, n_head=2))
    save_model(model, tok, tmp_path / "gpt2")  # GPT-2 names its context n_positions in config.json
    again, context = tokenizer_and_context(tmp_path / "gpt2")
    assert context == 64 and again("a b")["input_ids"] == tok("a b")["input_ids"]
    assert tokenizer_and_context("qwen2-micro")[1] == 512


def test_a_character_tokenizer_saved_as_qwen2_before_the_fix_loads_right_with_a_warning(tmp_path):
    from transformers import AutoTokenizer

    model, tok = load_model("qwen2-micro")
    save_model(model, tok, tmp_path / "first")
    as_qwen2 = AutoTokenizer.from_pretrained(str(tmp_path / "first"))  # what load_tokenizer used to return
    save_model(model, as_qwen2, tmp_path / "old")  # as the reward-model and PPO stages then saved it
    assert type(as_qwen2).__name__ == "Qwen2Tokenizer"
    with pytest.warns(UserWarning, match="drops spaces and newlines"):
        again = load_tokenizer(tmp_path / "old")
    assert again("a b\nc", add_special_tokens=False)["input_ids"] == tok("a b\nc", add_special_tokens=False)["input_ids"]


def test_a_lone_tokenizer_json_loads_as_it_is(tmp_path):
    # No tokenizer_config.json names a class: AutoTokenizer took the model type's (Qwen2's, which drops spaces)
    model, tok = load_model("qwen2-micro")
    save_model(model, tok, tmp_path / "m")
    (tmp_path / "m" / "tokenizer_config.json").unlink()
    with pytest.warns(UserWarning, match="without its tokenizer_config.json"):
        again = load_tokenizer(tmp_path / "m")
    assert again("a b\nc", add_special_tokens=False)["input_ids"] == tok("a b\nc", add_special_tokens=False)["input_ids"]
    assert (len(again), again.eos_token_id, again.pad_token_id) == (99, 1, 0)


def test_texts_the_tokenizer_cannot_encode_are_warned_of_by_name():
    from gradascent.lm.tokenizers import warn_unknown

    tok = char_tokenizer()
    with pytest.warns(UserWarning, match=r"sft: 2 of 3 texts hold characters the tokenizer encodes as <unk> "
                                         r"\(the first: f.jsonl:2, 'café'\)"):
        assert warn_unknown(tok, ["plain", "café", "a\tb"], ["f.jsonl:1", "f.jsonl:2", "f.jsonl:3"], "sft") == 2
    assert warn_unknown(tok, ["all ASCII\n"], ["x"], "sft") == 0
