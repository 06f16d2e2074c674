"""Grouped log-probs (each prompt run once for its G completions) equal the per-row ones, values and gradients."""

import pytest
import torch

from gradascent.lm import completion_logprobs, encode_prompts, generate, load_model
from gradascent.lm.grouped import grouped_completion_logprobs


@pytest.mark.parametrize("arch", ["qwen2-micro", "llama-micro"])
def test_grouped_equals_per_row_values_and_gradients(arch):
    torch.manual_seed(0)
    model, tok = load_model(arch, seed=0)
    G = 3
    ids, mask = encode_prompts(tok, ["a", "hello", "12+7="])  # prompts of different lengths: left padding
    g = generate(model, ids, mask, max_new_tokens=6, eos_token_ids=[tok.eos_token_id],
                 pad_token_id=tok.pad_token_id, num_samples=G, generator=torch.Generator().manual_seed(1))
    cmask = g.completion_mask.clone()
    cmask[1, 2:] = False  # a completion that ended early: the rest of its row must not count
    cids = g.completion_ids

    ref, ref_ent = completion_logprobs(model, g.prompt_ids, g.prompt_mask, cids, cmask, temperature=0.7,
                                       with_entropy=True)
    (ref * torch.linspace(0.5, 1.5, ref.numel()).view_as(ref)).sum().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    out, ent = grouped_completion_logprobs(model, ids, mask, cids, cmask, G, temperature=0.7, with_entropy=True)
    (out * torch.linspace(0.5, 1.5, out.numel()).view_as(out)).sum().backward()
    assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(ent, ref_ent, atol=1e-5)
    assert (out[~cmask] == 0).all()
    for p, r in zip(model.parameters(), ref_grads):
        assert torch.allclose(p.grad, r, atol=1e-5, rtol=1e-4)


def test_grouped_refuses_right_padded_prompts():
    model, tok = load_model("qwen2-micro", seed=0)
    ids = torch.tensor([[5, 6, 0]])
    mask = torch.tensor([[True, True, False]])
    with pytest.raises(Exception, match="left-padded"):
        grouped_completion_logprobs(model, ids, mask, torch.ones(2, 2, dtype=torch.long),
                                    torch.ones(2, 2, dtype=torch.bool), 2)
