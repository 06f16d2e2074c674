"""LoRA adapters: argument checks, adapters the fused engine cannot run, and damaged adapter directories."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from gradascent.errors import CheckpointError, ConfigError
from gradascent.lm import build_model, char_tokenizer, encode_prompts, generate

pytest.importorskip("peft")

from gradascent.lm import adapters  # noqa: E402
from gradascent.lm.generate import fused_supported  # noqa: E402


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.mark.parametrize("kwargs,message", [
    (dict(r=0), "rank r must be an int >= 1, got 0"),
    (dict(r=2.0), "rank r must be an int >= 1, got 2.0"),
    (dict(alpha=0), "alpha must be a finite number > 0"),
    (dict(alpha=-3.0), "alpha must be a finite number > 0"),
    (dict(dropout=1.0), "dropout must be in \\[0, 1\\)"),
    (dict(target_modules=("q_proj", "qkv")), "\\['qkv'\\] name no module"),
    (dict(target_modules="q_proj"), "a non-empty list of module names"),
    (dict(target_modules=("lm_head",)), "ties its LM head to its input embedding"),
])
def test_add_lora_refuses_what_peft_would_accept_or_fail_on(tok, kwargs, message):
    model = build_model("qwen2-micro", tok, seed=0)  # the presets tie the LM head to the embedding
    args = dict(r=4, alpha=8.0) | kwargs
    with pytest.raises(ConfigError, match=message):
        adapters.add_lora(model, "policy", args.pop("r"), args.pop("alpha"), **args)
    assert not any("lora_" in n for n, _ in model.named_parameters())  # nothing was added


def test_an_adapter_on_the_input_embedding_is_sampled_through_it(tok):
    """An embedding adapter (an untied model) is not a plain nn.Embedding: 'auto' takes the hf engine, whose
    greedy tokens are the adapted model's; the fused engine, which reads the base weights, is refused."""
    from transformers import AutoModelForCausalLM

    from gradascent.lm.models import preset_config

    cfg = preset_config("qwen2-micro", len(tok), tok.pad_token_id, tok.eos_token_id)
    cfg.tie_word_embeddings = False
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    ids, mask = encode_prompts(tok, ["12+7=", "x"])
    plain = generate(model, ids, mask, max_new_tokens=8, eos_token_ids=[], pad_token_id=0, greedy=True)
    adapters.add_lora(model, "policy", 4, 8.0, target_modules=("embed_tokens",))
    with torch.no_grad():  # a trained adapter (peft starts an embedding's A at zero)
        for name, p in model.named_parameters():
            if "lora_embedding_" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    model.eval()
    assert not fused_supported(model)
    ours = generate(model, ids, mask, max_new_tokens=8, eos_token_ids=[], pad_token_id=0, greedy=True)
    ref = model.generate(input_ids=ids, attention_mask=mask.long(), max_new_tokens=8, do_sample=False,
                         eos_token_id=None, pad_token_id=0)[:, ids.shape[1]:]
    assert torch.equal(ours.completion_ids, ref)
    assert not torch.equal(ours.completion_ids, plain.completion_ids)  # the adapter matters here
    with pytest.raises(ConfigError, match="fused"):
        generate(model, ids, mask, max_new_tokens=2, eos_token_ids=[], pad_token_id=0, engine="fused")


def _saved_adapter(tok, path):
    base = build_model("qwen2-micro", tok, seed=0)
    handle = adapters.add_lora(base, "reward", 4, 8.0)
    adapters.save_adapter(handle, "reward", path, adapters.base_fingerprint(base))
    return path / adapters.LORA_DIR


def _damage(src, how):
    saved = src / "reward" if (src / "reward" / "adapter_config.json").is_file() else src
    if how == "no weights":
        (saved / "adapter_model.safetensors").unlink()
    elif how == "truncated weights":
        data = (saved / "adapter_model.safetensors").read_bytes()
        (saved / "adapter_model.safetensors").write_bytes(data[:40])
    elif how == "no config":
        (saved / "adapter_config.json").unlink()
    elif how == "bad config":
        (saved / "adapter_config.json").write_text("{not json", encoding="utf-8")
    elif how == "base.json a list":
        (src / "base.json").write_text("[1, 2]", encoding="utf-8")
    elif how == "no fingerprint":
        (src / "base.json").write_text(json.dumps({"adapter": "reward"}), encoding="utf-8")
    elif how == "config targets fewer":  # weights saved for the 7 default targets, config edited to one
        cfg = json.loads((saved / "adapter_config.json").read_text(encoding="utf-8"))
        cfg["target_modules"] = ["q_proj"]
        (saved / "adapter_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    elif how == "weights of a target missing":
        weights = load_file(saved / "adapter_model.safetensors")
        save_file({k: v for k, v in weights.items() if "down_proj" not in k}, saved / "adapter_model.safetensors")


@pytest.mark.parametrize("how,message", [
    ("no weights", "incomplete: adapter_model.safetensors is missing"),
    ("truncated weights", "is corrupt"),
    ("no config", "incomplete: adapter_config.json is missing"),
    ("bad config", "is corrupt"),
    ("base.json a list", "base.json must be an object with the 'base_fingerprint'"),
    ("no fingerprint", "base.json must be an object with the 'base_fingerprint'"),
    ("config targets fewer", r"does not match its adapter_config.json: 24 saved weights belong to no layer"),
    ("weights of a target missing", r"does not match its adapter_config.json: 4 weights of its layers are missing"),
])
def test_a_damaged_adapter_directory_is_a_checkpoint_error_naming_it(tok, tmp_path, how, message):
    src = _saved_adapter(tok, tmp_path)
    policy = build_model("qwen2-micro", tok, seed=0)
    handle = adapters.add_lora(policy, "policy", 4, 8.0)
    adapters.load_adapter(handle, tmp_path, "reward", policy)  # intact: loads
    _damage(src, how)
    policy = build_model("qwen2-micro", tok, seed=0)
    handle = adapters.add_lora(policy, "policy", 4, 8.0)
    with pytest.raises(CheckpointError, match=message) as err:
        adapters.load_adapter(handle, tmp_path, "reward", policy)
    assert str(tmp_path) in str(err.value)
    assert "reward" not in handle.peft_config and handle.active_adapter == "policy"  # nothing half-loaded left


def test_adding_and_loading_adapters_shows_no_deprecation_warning_of_peft(tok, tmp_path, recwarn):
    # peft reads a property that transformers 5 deprecates; the user would see a FutureWarning per adapter
    _saved_adapter(tok, tmp_path)
    policy = build_model("qwen2-micro", tok, seed=0)
    handle = adapters.add_lora(policy, "policy", 4, 8.0)
    adapters.load_adapter(handle, tmp_path, "reward", policy)
    assert [str(w.message) for w in recwarn if issubclass(w.category, FutureWarning)] == []
