"""Log-probs and entropies against the naive full log-softmax, with left, right and packed layouts."""

import pytest
import torch

from gradascent.errors import ConfigError, DataError
from gradascent.lm import build_model, char_tokenizer, completion_logprobs, position_ids_from_mask, sequence_logprobs


@pytest.fixture(scope="module")
def setup():
    tok = char_tokenizer()
    model = build_model("qwen2-micro", tok, seed=21)
    return model, tok


def _batch(tok, pairs, prompt_side="left"):
    """Prompts padded on ``prompt_side``, completions right-padded; returns the four tensors."""
    P = max(len(tok(p)["input_ids"]) for p, _ in pairs)
    T = max(len(tok(c)["input_ids"]) for _, c in pairs)
    pi, pm = torch.zeros(len(pairs), P, dtype=torch.long), torch.zeros(len(pairs), P, dtype=torch.bool)
    ci, cm = torch.zeros(len(pairs), T, dtype=torch.long), torch.zeros(len(pairs), T, dtype=torch.bool)
    for i, (p, c) in enumerate(pairs):
        a, b = tok(p)["input_ids"], tok(c)["input_ids"]
        sl = slice(P - len(a), P) if prompt_side == "left" else slice(0, len(a))
        pi[i, sl], pm[i, sl] = torch.tensor(a), True
        ci[i, : len(b)], cm[i, : len(b)] = torch.tensor(b), True
    return pi, pm, ci, cm


PAIRS = [("12+7=", "19"), ("1+1=", "2"), ("Describe the cat:", " good warm")]


def _naive(model, tok, pairs, temperature):
    """Each example alone, unpadded: log_softmax(logits / T) gathered, and the entropy, per completion token."""
    lps, ents = [], []
    for p, c in pairs:
        a, b = tok(p)["input_ids"], tok(c)["input_ids"]
        ids = torch.tensor([a + b])
        z = model(input_ids=ids).logits[0, len(a) - 1:-1].float() / temperature
        logp_all = torch.log_softmax(z, -1)
        lps.append(logp_all.gather(-1, torch.tensor(b)[:, None]).squeeze(-1))
        ents.append(-(logp_all.exp() * logp_all).sum(-1))
    return lps, ents


@pytest.mark.parametrize("side", ["left", "right"])
def test_matches_naive_log_softmax_and_entropy(setup, side):
    model, tok = setup
    pi, pm, ci, cm = _batch(tok, PAIRS, side)
    with torch.no_grad():
        lp, ent = completion_logprobs(model, pi, pm, ci, cm, temperature=0.8, with_entropy=True)
        ref_lp, ref_ent = _naive(model, tok, PAIRS, 0.8)
    for i, (r_lp, r_ent) in enumerate(zip(ref_lp, ref_ent)):
        n = len(r_lp)
        assert torch.allclose(lp[i, :n], r_lp, atol=1e-5) and torch.allclose(ent[i, :n], r_ent, atol=1e-5)
        assert (lp[i, n:] == 0).all() and (ent[i, n:] == 0).all()


def test_chunking_and_gradients_match_the_naive_computation(setup):
    model, tok = setup
    pi, pm, ci, cm = _batch(tok, PAIRS)
    model.zero_grad()
    lp = completion_logprobs(model, pi, pm, ci, cm, chunk_tokens=2)  # 2 tokens per chunk, checkpointed
    lp.sum().backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref_lp, _ = _naive(model, tok, PAIRS, 1.0)
    torch.stack([x.sum() for x in ref_lp]).sum().backward()
    assert torch.allclose(lp.sum(), sum(x.sum() for x in ref_lp), atol=1e-4)
    for n, p in model.named_parameters():
        assert torch.allclose(ours[n], p.grad, atol=1e-5), n
    model.zero_grad()


def test_packed_rows_score_like_separate_examples(setup):
    model, tok = setup
    # Two examples packed in one row with positions restarting at 0, then a padding tail.
    a, b = tok("12+7=19")["input_ids"], tok("1+1=2")["input_ids"]
    ids = torch.tensor([a + b + [0, 0]])
    mask = torch.tensor([[True] * (len(a) + len(b)) + [False, False]])
    pos = torch.tensor([list(range(len(a))) + list(range(len(b))) + [0, 1]])
    target = torch.zeros_like(mask)
    target[0, 5:7] = True  # "19"
    target[0, len(a) + 4: len(a) + 5] = True  # "2"
    with torch.no_grad():
        packed = sequence_logprobs(model, ids, mask, target, position_ids=pos)
        ref, _ = _naive(model, tok, [("12+7=", "19"), ("1+1=", "2")], 1.0)
    assert torch.allclose(packed[0, 5:7], ref[0], atol=1e-5)
    assert torch.allclose(packed[0, len(a) + 4], ref[1][0], atol=1e-5)
    # Without the positions the second example would see the first: a different (wrong) answer.
    with torch.no_grad():
        leaky = sequence_logprobs(model, ids, mask, target)
    assert not torch.allclose(leaky[0, len(a) + 4], ref[1][0], atol=1e-3)


def test_pad_equal_to_eos_inside_the_sequence(setup):
    model, tok = setup
    # pad == eos == 1: the masks alone say which 1s are real. Row 0's completion ends with a real EOS (1);
    # row 1 is shorter and padded with 1s that must not count.
    pi, pm, ci, cm = _batch(tok, [("12+7=", "19"), ("1+1=", "2")])
    pi[~pm] = 1
    ci = torch.tensor([[tok.convert_tokens_to_ids("1"), tok.convert_tokens_to_ids("9"), 1],
                       [tok.convert_tokens_to_ids("2"), 1, 1]])
    cm = torch.tensor([[True, True, True], [True, True, False]])
    with torch.no_grad():
        lp = completion_logprobs(model, pi, pm, ci, cm)
        full_ids = torch.cat([pi, ci], 1)
        full_mask = torch.cat([pm, cm], 1)
        logits = model(input_ids=full_ids, attention_mask=full_mask.long(),
                       position_ids=position_ids_from_mask(full_mask)).logits
    P = pi.shape[1]
    ref = torch.log_softmax(logits[:, P - 1:-1], -1).gather(-1, ci[..., None]).squeeze(-1)
    assert torch.allclose(lp[cm], ref[cm], atol=1e-5)
    assert lp[1, 2] == 0


def test_bad_targets_and_unsupported_models(setup):
    model, tok = setup
    ids = torch.tensor([[0, 5, 6, 7]])
    mask = torch.tensor([[False, True, True, True]])
    with pytest.raises(DataError, match="first real token"):
        sequence_logprobs(model, ids, mask, torch.tensor([[False, True, False, False]]))
    with pytest.raises(DataError, match="padding token"):
        sequence_logprobs(model, ids, mask, torch.tensor([[True, False, False, False]]))
    with pytest.raises(ConfigError, match="temperature"):
        sequence_logprobs(model, ids, mask, torch.tensor([[False, False, True, True]]), temperature=0)
    capped = build_model("qwen2-micro", tok)
    capped.config.final_logit_softcapping = 30.0
    with pytest.raises(ConfigError, match="final_logit_softcapping"):
        sequence_logprobs(capped, ids, mask, torch.tensor([[False, False, True, True]]))
