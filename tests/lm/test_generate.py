"""The sampler: equivalence with transformers' generate, log-probs, masks, stopping, and the sampling filters."""

import pytest
import torch

from gradascent.errors import ConfigError, DataError
from gradascent.lm import (
    PRESETS,
    build_model,
    char_tokenizer,
    completion_logprobs,
    encode_prompts,
    filter_logits,
    generate,
    generate_text,
    position_ids_from_mask,
)
from gradascent.lm.generate import inverse_cdf

PROMPTS = ["12+7=", "1+1=", "Describe the cat:", "x"]  # lengths 5, 4, 17, 1: three rows are left-padded


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def _hf_greedy(model, ids, mask, new, eos, pad):
    out = model.generate(input_ids=ids, attention_mask=mask.long(), max_new_tokens=new, do_sample=False,
                         eos_token_id=eos, pad_token_id=pad)
    return out[:, ids.shape[1]:]


def _step_logits(model, gen):
    """Logits (N, T, V) that predicted each completion token, from one full forward of prompt + completion."""
    mask = gen.attention_mask
    with torch.no_grad():
        logits = model(input_ids=gen.input_ids, attention_mask=mask.long(),
                       position_ids=position_ids_from_mask(mask)).logits
    P = gen.prompt_ids.shape[1]
    return logits[:, P - 1:-1]


@pytest.mark.parametrize("preset,engine", [(p, "fused") for p in PRESETS] + [
    ("qwen2-micro", "hf"), ("llama-micro", "hf"), ("qwen2-1m", "hf")])
def test_greedy_equals_transformers_generate(tok, preset, engine):
    model = build_model(preset, tok, seed=11).eval()
    ids, mask = encode_prompts(tok, PROMPTS)
    ref = _hf_greedy(model, ids, mask, 12, eos=None, pad=0)
    ours = generate(model, ids, mask, max_new_tokens=12, eos_token_ids=[], pad_token_id=0, greedy=True, engine=engine)
    assert torch.equal(ours.completion_ids, ref)
    assert ours.completion_mask.all() and not ours.finished.any()
    # Now let rows stop: make the token row 0 emits at step 3 an EOS id. HF pads finished rows with pad_token_id.
    eos = int(ref[0, 3])
    ref = _hf_greedy(model, ids, mask, 12, eos=eos, pad=0)
    ours = generate(model, ids, mask, max_new_tokens=12, eos_token_ids=[eos], pad_token_id=0, greedy=True,
                    engine=engine)
    assert torch.equal(ours.completion_ids, ref)
    ended = (ours.completion_ids == eos) & ours.completion_mask
    assert ended[0].nonzero().flatten().tolist()[:1] == [int((ref[0] == eos).nonzero()[0])]
    # The mask covers the tokens up to and including the first EOS, and nothing after it.
    for row, m in zip(ours.completion_ids.tolist(), ours.completion_mask.tolist()):
        n = row.index(eos) + 1 if eos in row else len(row)
        assert m == [True] * n + [False] * (len(row) - n)


@pytest.mark.parametrize("kernel", ["mkl", "onednn", None])
def test_every_packing_kernel_gives_hf_greedy_tokens_and_exact_logprobs(tok, monkeypatch, kernel):
    """The fused engine's float32 products on a CPU run MKL's or oneDNN's packed weights, whichever
    ``packed_kernel`` picks on this CPU, or plain matmuls: each of the three, forced, gives the greedy tokens
    of HF generate and log-probs equal to the recomputed ones."""
    import sys

    generate_module = sys.modules["gradascent.lm.generate"]
    if kernel == "mkl" and not generate_module._mkl_packing():
        pytest.skip("this torch has no MKL packed linear")
    if kernel == "onednn" and not hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        pytest.skip("this torch has no oneDNN weight packing")
    monkeypatch.setattr(generate_module, "packed_kernel", lambda: kernel)
    made = []
    original = generate_module._FusedDecoder.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(self.packed)

    monkeypatch.setattr(generate_module._FusedDecoder, "__init__", spy)
    model = build_model("qwen2-1m", tok, seed=3).eval()
    ids, mask = encode_prompts(tok, PROMPTS)
    ours = generate(model, ids, mask, max_new_tokens=10, eos_token_ids=[], pad_token_id=0, greedy=True)
    assert made == [kernel]
    assert torch.equal(ours.completion_ids, _hf_greedy(model, ids, mask, 10, eos=None, pad=0))
    sampled = generate(model, ids, mask, max_new_tokens=10, eos_token_ids=[], pad_token_id=0, num_samples=2,
                       generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        again = completion_logprobs(model, sampled.prompt_ids, sampled.prompt_mask, sampled.completion_ids,
                                    sampled.completion_mask)
    torch.testing.assert_close(sampled.logp, again, atol=1e-5, rtol=1e-5)


def test_auto_engine_samples_a_model_with_lora_adapters_through_them(tok):
    """The fused engine reads base weights: with an adapter on, 'auto' must take the hf engine, whose greedy
    tokens and log-probs are those of the adapted model, and an explicit 'fused' must be refused."""
    pytest.importorskip("peft")
    from gradascent.lm.adapters import add_lora
    from gradascent.lm.generate import fused_supported

    model = build_model("qwen2-micro", tok, seed=3).eval()
    ids, mask = encode_prompts(tok, PROMPTS)
    plain = _hf_greedy(model, ids, mask, 10, eos=None, pad=0)
    add_lora(model, "policy", 4, 8)
    with torch.no_grad():  # a trained adapter: B != 0 changes the model's outputs
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(0)) * 0.5)
    model.eval()
    ref = _hf_greedy(model, ids, mask, 10, eos=None, pad=0)
    assert not torch.equal(ref, plain)  # the adapter matters for this test to mean anything
    assert not fused_supported(model)
    ours = generate(model, ids, mask, max_new_tokens=10, eos_token_ids=[], pad_token_id=0, greedy=True)
    assert torch.equal(ours.completion_ids, ref)
    with torch.no_grad():
        recomputed = completion_logprobs(model, ours.prompt_ids, ours.prompt_mask, ours.completion_ids,
                                         ours.completion_mask)
    assert torch.allclose(ours.logp, recomputed, atol=1e-5)
    with pytest.raises(ConfigError, match="fused"):
        generate(model, ids, mask, max_new_tokens=2, eos_token_ids=[], pad_token_id=0, engine="fused")


@pytest.mark.parametrize("engine,dtype", [("fused", None), ("fused", "bfloat16"), ("hf", None)])
def test_samples_of_one_prompt_equal_the_prompt_repeated(tok, engine, dtype):
    """num_samples=3 prefills each prompt once and copies its cache: the same draws as three copies of it
    (float32: oneDNN-packed weights on a CPU; bfloat16: the plain matmul path)."""
    model = build_model("qwen2-micro", tok, seed=13).eval()
    ids, mask = encode_prompts(tok, PROMPTS)
    kw = dict(max_new_tokens=8, eos_token_ids=[1], pad_token_id=0, engine=engine, dtype=dtype)
    shared = generate(model, ids, mask, num_samples=3, generator=torch.Generator().manual_seed(5), **kw)
    copies = generate(model, ids.repeat_interleave(3, 0), mask.repeat_interleave(3, 0), num_samples=1,
                      generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(shared.completion_ids, copies.completion_ids)
    assert torch.equal(shared.completion_mask, copies.completion_mask)
    torch.testing.assert_close(shared.logp, copies.logp, atol=1e-5, rtol=1e-5)
    assert torch.equal(shared.prompt_ids, copies.prompt_ids)


@pytest.mark.parametrize("tokens", [17, 40])  # prompts of 17 columns: chunks of one prompt; of 2, 2 and 1
def test_prefill_in_chunks_of_prompts_changes_nothing(tok, monkeypatch, tokens):
    """The fused prefill runs the prompts in chunks of _PREFILL_TOKENS tokens: greedy tokens still equal HF's,
    and samples (num_samples=2, the cache rows of each prompt copied) equal those of a one-chunk prefill."""
    import sys

    generate_module = sys.modules["gradascent.lm.generate"]  # the package's ``generate`` is the function
    model = build_model("qwen2-micro", tok, seed=17).eval()
    ids, mask = encode_prompts(tok, PROMPTS + ["7+7="])  # 5 prompts of 17 columns
    kw = dict(max_new_tokens=6, eos_token_ids=[], pad_token_id=0, engine="fused")
    one_chunk = generate(model, ids, mask, num_samples=2, generator=torch.Generator().manual_seed(2), **kw)
    monkeypatch.setattr(generate_module, "_PREFILL_TOKENS", tokens)
    chunked = generate(model, ids, mask, num_samples=2, generator=torch.Generator().manual_seed(2), **kw)
    assert torch.equal(chunked.completion_ids, one_chunk.completion_ids)
    torch.testing.assert_close(chunked.logp, one_chunk.logp, atol=1e-5, rtol=1e-5)
    greedy = generate(model, ids, mask, greedy=True, **kw)
    assert torch.equal(greedy.completion_ids, _hf_greedy(model, ids, mask, 6, eos=None, pad=0))


def test_unfilled_kv_cache_is_written_before_it_is_read(tok, monkeypatch):
    """The fused engine leaves its KV cache unfilled: filled with NaN instead (anything at all may be in fresh
    memory), not a single token or log-prob may change, left padding and early EOS included."""
    import sys

    dec_cls = sys.modules["gradascent.lm.generate"]._FusedDecoder
    model = build_model("qwen2-micro", tok, seed=19).eval()
    ids, mask = encode_prompts(tok, PROMPTS)
    kw = dict(max_new_tokens=7, eos_token_ids=[1], pad_token_id=0, num_samples=2, engine="fused")
    plain = generate(model, ids, mask, generator=torch.Generator().manual_seed(4), **kw)
    init = dec_cls.__init__

    def nan_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        for t in self.k + self.v:
            t.fill_(float("nan"))

    monkeypatch.setattr(dec_cls, "__init__", nan_init)
    poisoned = generate(model, ids, mask, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(poisoned.completion_ids, plain.completion_ids)
    assert torch.equal(poisoned.logp, plain.logp) and bool(torch.isfinite(poisoned.logp).all())


def test_sampled_logprobs_equal_recomputed_logprobs(tok):
    model = build_model("qwen2-micro", tok, seed=12)
    ids, mask = encode_prompts(tok, PROMPTS)
    for temperature in (1.0, 0.7):
        g = generate(model, ids, mask, max_new_tokens=10, eos_token_ids=[1], pad_token_id=0, num_samples=3,
                     temperature=temperature, generator=torch.Generator().manual_seed(0))
        assert g.completion_ids.shape[0] == 12 and g.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
        with torch.no_grad():
            lp = completion_logprobs(model, g.prompt_ids, g.prompt_mask, g.completion_ids, g.completion_mask,
                                     temperature=temperature)
        assert torch.allclose(lp, g.logp, atol=1e-5)
        assert (g.logp[~g.completion_mask] == 0).all()
        # And they are the log-probs of the tempered distribution: log_softmax(logits / T)[token].
        direct = torch.log_softmax(_step_logits(model, g) / temperature, -1)
        direct = direct.gather(-1, g.completion_ids[..., None]).squeeze(-1)
        assert torch.allclose(direct[g.completion_mask], g.logp[g.completion_mask], atol=1e-5)


def test_temperature_scales_the_sampling_distribution(tok):
    # One prompt, 20000 one-token samples at T = 0.5: the empirical distribution of the first token must match
    # softmax(logits / 0.5) (total variation below 0.03; the sampling noise of 20000 draws is ~0.01), and must not
    # match softmax(logits) (T = 1), from which it is far.
    model = build_model("qwen2-micro", tok, seed=13)
    ids, mask = encode_prompts(tok, ["12+7="])
    with torch.no_grad():  # spread the logits to a std of 1.5 so that the temperature visibly matters
        model.lm_head.weight.mul_(1.5 / model(input_ids=ids).logits[0, -1].std())
    g = generate(model, ids, mask, max_new_tokens=1, eos_token_ids=[], pad_token_id=0, num_samples=20000,
                 temperature=0.5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1]
    counts = torch.bincount(g.completion_ids[:, 0], minlength=logits.shape[0]).float() / 20000
    tv_tempered = 0.5 * (counts - torch.softmax(logits / 0.5, -1)).abs().sum()
    tv_plain = 0.5 * (counts - torch.softmax(logits, -1)).abs().sum()
    assert tv_tempered < 0.03 < tv_plain


def test_top_k_and_top_p_are_respected(tok):
    model = build_model("qwen2-micro", tok, seed=14)
    ids, mask = encode_prompts(tok, PROMPTS)
    with torch.no_grad():  # logits with a std of about 1: peaked enough for top-p to cut, not degenerate
        model.lm_head.weight.mul_(1.0 / model(input_ids=ids).logits[:, -1].std())
    gen = torch.Generator().manual_seed(2)
    g = generate(model, ids, mask, max_new_tokens=8, eos_token_ids=[], pad_token_id=0, num_samples=8, top_k=3,
                 generator=gen)
    logits = _step_logits(model, g)
    top3 = logits.topk(3, dim=-1).indices
    assert (top3 == g.completion_ids[..., None]).any(-1).all()
    # top-p = 0.6: every sampled token lies in the nucleus, i.e. the mass of the tokens strictly more likely
    # than it is below 0.6.
    g = generate(model, ids, mask, max_new_tokens=8, eos_token_ids=[], pad_token_id=0, num_samples=8, top_p=0.6,
                 generator=gen)
    probs = torch.softmax(_step_logits(model, g), -1)
    p_tok = probs.gather(-1, g.completion_ids[..., None])
    mass_above = (probs * (probs > p_tok)).sum(-1)
    assert (mass_above < 0.6).all()
    # The check has teeth: tokens outside the nucleus carried real mass, and draws did not all take the top-1.
    sorted_p = probs.sort(-1, descending=True).values
    outside = (sorted_p * ((sorted_p.cumsum(-1) - sorted_p) >= 0.6)).sum(-1)
    assert outside.mean() > 0.2
    assert (g.completion_ids != probs.argmax(-1)).any()


def test_filter_logits_by_hand():
    z = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    inf = float("-inf")
    assert filter_logits(z, top_k=2).isinf().tolist() == [[False, False, True, True]]
    # Nucleus 0.8: masses before each token are 0, 0.5, 0.8, 0.95 -> keep those below 0.8: the first two.
    assert filter_logits(z, top_p=0.8).isinf().tolist() == [[False, False, True, True]]
    # Nucleus 0.81: the third token's mass-before (0.8) is below 0.81 -> kept.
    assert filter_logits(z, top_p=0.81).isinf().tolist() == [[False, False, False, True]]
    assert filter_logits(z, top_p=0.1)[0, 0] != inf  # the most likely token always survives


def test_inverse_cdf_by_hand():
    # probs 0.25, 0, 0.5, 0.25 (unnormalised: x2): cumulative 0.25, 0.25, 0.75, 1. A draw u picks the first token
    # whose cumulative mass exceeds u; the zero-probability token 1 is never picked, even at u = 0.25 exactly.
    probs = torch.tensor([[0.5, 0.0, 1.0, 0.5]]).expand(7, 4)
    u = torch.tensor([0.0, 0.2, 0.25, 0.5, 0.75, 0.9, 1.0 - 2.0 ** -53], dtype=torch.float64)
    assert inverse_cdf(probs, u).tolist() == [0, 0, 2, 2, 3, 3, 3]
    # Trailing zeros (a top-k cut of the last tokens): u just below 1 still lands on the last positive token.
    tail = torch.tensor([[0.25, 0.75, 0.0, 0.0]]).expand(3, 4)
    assert inverse_cdf(tail, torch.tensor([0.2, 0.25, 1.0 - 2.0 ** -53], dtype=torch.float64)).tolist() == [0, 1, 1]


def test_inverse_cdf_draws_the_distribution():
    # 200000 draws from a fixed distribution with zeros in it: frequencies within 4 standard errors of probs,
    # and never a token of probability 0.
    probs = torch.tensor([0.05, 0.0, 0.6, 0.25, 0.0, 0.1])
    u = torch.rand(200_000, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    counts = torch.bincount(inverse_cdf(probs.expand(200_000, 6), u), minlength=6).double() / 200_000
    se = (probs.double() * (1 - probs.double()) / 200_000).sqrt()
    assert counts[1] == 0 and counts[4] == 0
    assert ((counts - probs.double()).abs() <= 4 * se + 1e-12).all(), counts


def test_pad_equal_to_eos_and_several_eos_ids(tok):
    model = build_model("qwen2-micro", tok, seed=15).eval()
    ids, mask = encode_prompts(tok, PROMPTS)
    free = generate(model, ids, mask, max_new_tokens=10, eos_token_ids=[], pad_token_id=0, greedy=True)
    # Two EOS ids, taken from what rows 0 and 1 emit at steps 2 and 4; pad == the first of them.
    e1, e2 = int(free.completion_ids[0, 2]), int(free.completion_ids[1, 4])
    g = generate(model, ids, mask, max_new_tokens=10, eos_token_ids=[e1, e2], pad_token_id=e1, greedy=True)
    for i, (row, m) in enumerate(zip(g.completion_ids.tolist(), g.completion_mask.tolist())):
        stops = [t for t, tokn in enumerate(free.completion_ids[i].tolist()) if tokn in (e1, e2)]
        n = stops[0] + 1 if stops else 10
        assert m[:n] == [True] * n and not any(m[n:])
        assert row[:n] == free.completion_ids[i, :n].tolist()
        assert all(t == e1 for t in row[n:])  # padding after the end is the pad id, here equal to an EOS id
        assert bool(g.finished[i]) == bool(stops)
    assert g.lengths.tolist() == g.completion_mask.sum(-1).tolist()
    # Log-probs recomputed from the explicit masks agree even though pad == eos.
    with torch.no_grad():
        lp = completion_logprobs(model, g.prompt_ids, g.prompt_mask, g.completion_ids, g.completion_mask)
    assert torch.allclose(lp, g.logp, atol=1e-5)


def test_all_finished_rows_trim_the_output(tok):
    model = build_model("qwen2-micro", tok, seed=16).eval()
    ids, mask = encode_prompts(tok, ["1+1="])
    free = generate(model, ids, mask, max_new_tokens=20, eos_token_ids=[], pad_token_id=0, greedy=True)
    eos = int(free.completion_ids[0, 1])
    first = free.completion_ids[0].tolist().index(eos)  # the first occurrence (at step 0 or 1)
    g = generate(model, ids, mask, max_new_tokens=20, eos_token_ids=[eos], pad_token_id=0, greedy=True)
    assert g.completion_ids.shape == (1, first + 1) and g.finished.all()


def test_seeded_generator_reproduces_samples(tok):
    model = build_model("qwen2-micro", tok, seed=17)
    ids, mask = encode_prompts(tok, PROMPTS)
    a, b, c = (generate(model, ids, mask, max_new_tokens=6, eos_token_ids=[1], pad_token_id=0, num_samples=2,
                        generator=torch.Generator().manual_seed(s)) for s in (5, 5, 6))
    assert torch.equal(a.completion_ids, b.completion_ids) and not torch.equal(a.completion_ids, c.completion_ids)


def test_bfloat16_sampling_stays_close_to_float32(tok):
    model = build_model("qwen2-micro", tok, seed=18).eval()
    ids, mask = encode_prompts(tok, PROMPTS)
    g = generate(model, ids, mask, max_new_tokens=6, eos_token_ids=[], pad_token_id=0, dtype="bfloat16",
                 generator=torch.Generator().manual_seed(0))
    assert g.completion_ids.dtype == torch.long and g.logp.dtype == torch.float32
    with torch.no_grad():
        lp = completion_logprobs(model, g.prompt_ids, g.prompt_mask, g.completion_ids, g.completion_mask)
    # bfloat16 keeps 8 bits of mantissa: log-probs near -4.6 (uniform over 99) agree to a few hundredths.
    assert (lp - g.logp).abs().max() < 0.1
    with pytest.raises(ConfigError, match="engine 'hf' runs the model where it is"):
        generate(model, ids, mask, max_new_tokens=2, eos_token_ids=[], pad_token_id=0, dtype="bfloat16", engine="hf")


def test_bad_inputs(tok):
    model = build_model("qwen2-micro", tok, max_position_embeddings=16)
    ids, mask = encode_prompts(tok, ["12+7=", "Describe the cat:"])  # 17 tokens > context of 16
    with pytest.raises(DataError, match="exceeds the model's context of 16"):
        generate(model, ids, mask, max_new_tokens=4, eos_token_ids=[1], pad_token_id=0)
    ids, mask = encode_prompts(tok, ["12+7=", "1+1="])
    with pytest.raises(DataError, match="exceeds"):
        generate(model, ids, mask, max_new_tokens=12, eos_token_ids=[1], pad_token_id=0)  # 5 + 12 > 16
    mask[1] = False
    with pytest.raises(DataError, match="a prompt is empty"):
        generate(model, ids, mask, max_new_tokens=2, eos_token_ids=[1], pad_token_id=0)
    mask[1] = True
    right = torch.tensor([[True] * 4 + [False], [True] * 5])  # row 0 padded on the right
    with pytest.raises(DataError, match="left-padded"):
        generate(model, ids, right, max_new_tokens=2, eos_token_ids=[1], pad_token_id=0)
    for kw, msg in (({"temperature": 0.0}, "temperature"), ({"top_p": 0.0}, "top_p"), ({"top_k": -1}, "top_k"),
                    ({"num_samples": 0}, "num_samples")):
        with pytest.raises(ConfigError, match=msg):
            generate(model, ids, mask, max_new_tokens=2, eos_token_ids=[1], pad_token_id=0, **kw)


def test_generate_text_decodes_without_eos(tok):
    model = build_model("qwen2-micro", tok, seed=19)
    gen, texts = generate_text(model, tok, ["12+7=", "hi"], max_new_tokens=5, greedy=True)
    assert len(texts) == 2
    for text, row, m in zip(texts, gen.completion_ids.tolist(), gen.completion_mask.tolist()):
        kept = [t for t, k in zip(row, m) if k and t != tok.eos_token_id]
        assert text == tok.decode(kept)
