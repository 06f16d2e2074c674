"""Wrong arguments to the language-model functions are named before torch or transformers fail on them."""

import pytest
import torch

from gradascent.errors import ConfigError, DataError
from gradascent.lm import build_model, char_tokenizer, completion_logprobs, generate
from gradascent.lm.grouped import grouped_completion_logprobs
from gradascent.lm.heads import RewardModel, ValueModel
from gradascent.lm.tokenizers import decode_completions, encode_prompts


@pytest.fixture(scope="module")
def setup():
    tok = char_tokenizer()
    model = build_model("qwen2-micro", tok, seed=3)
    ids, mask = encode_prompts(tok, ["12+34=", "1+1="])
    return model, tok, ids, mask


def test_prompts_must_be_a_list_of_strings(setup):
    _, tok, _, _ = setup
    with pytest.raises(DataError, match="got one string '12\\+34='; pass \\[prompt\\]"):
        encode_prompts(tok, "12+34=")  # a str would otherwise be six one-character prompts
    with pytest.raises(DataError, match="prompt 1 is int 12, not a string"):
        encode_prompts(tok, ["a", 12])


def test_generate_names_its_bad_arguments(setup):
    model, _, ids, mask = setup
    args = dict(max_new_tokens=2, eos_token_ids=[], pad_token_id=0)
    with pytest.raises(ConfigError, match="engine must be 'auto', 'fused' or 'hf', got 'bogus'"):
        generate(model, ids, mask, **{**args, "engine": "bogus"})
    with pytest.raises(ConfigError, match="eos_token_ids must be a list of token ids, got 1"):
        generate(model, ids, mask, **{**args, "eos_token_ids": 1})
    with pytest.raises(ConfigError, match="pad_token_id must be a token id"):
        generate(model, ids, mask, **{**args, "pad_token_id": None})
    with pytest.raises(DataError, match="prompt_ids hold id 1099, outside the model's vocabulary of 99"):
        generate(model, torch.where(mask, ids, 0).masked_fill(ids == ids.max(), 1099), mask, **args)
    with pytest.raises(DataError, match="prompt_ids must be an integer tensor"):
        generate(model, ids.float(), mask, **args)


def test_log_probs_check_ids_masks_and_chunks(setup):
    model, _, ids, mask = setup
    g = generate(model, ids, mask, max_new_tokens=3, eos_token_ids=[], pad_token_id=0, num_samples=2)
    rep_ids, rep_mask = ids.repeat_interleave(2, 0), mask.repeat_interleave(2, 0)
    with pytest.raises(DataError, match="input_ids hold id 599"):
        completion_logprobs(model, rep_ids, rep_mask, g.completion_ids.fill_(599), g.completion_mask)
    g = generate(model, ids, mask, max_new_tokens=3, eos_token_ids=[], pad_token_id=0, num_samples=2)
    with pytest.raises(ConfigError, match="chunk_tokens must be >= 1"):
        completion_logprobs(model, rep_ids, rep_mask, g.completion_ids, g.completion_mask, chunk_tokens=-1)
    with pytest.raises(DataError, match=r"completion ids \(4, 3\) / mask \(4, 2\)"):
        grouped_completion_logprobs(model, ids, mask, g.completion_ids, g.completion_mask[:, :2], 2)
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        grouped_completion_logprobs(model, ids, mask, g.completion_ids, g.completion_mask, 2, temperature=0)
    with pytest.raises(DataError, match=r"completion ids \(4, 3\) and mask \(2, 3\) differ"):
        decode_completions(setup[1], g.completion_ids, g.completion_mask[:2])


def test_heads_check_their_masks(setup):
    model, _, ids, mask = setup
    rm = RewardModel(model)
    with pytest.raises(DataError, match=r"mask has shape \(2, 1\), input_ids \(2, 6\)"):
        rm(ids, mask[:, :1])
    with pytest.raises(DataError, match="row 0 has no real token to score"):
        rm(ids, torch.zeros_like(mask))
    assert torch.equal(rm(ids, mask.long()), rm(ids, mask))  # a 0/1 integer mask reads as the bool one
    with pytest.raises(DataError, match="completion_mask has shape"):
        ValueModel(model).completion_values(ids, mask, ids, mask[:, :2])
