"""Batched sampling of completions with a pre-allocated KV cache.

``generate`` samples ``num_samples`` completions for each of B left-padded prompts and returns the tokens, a
completion mask and the sampling log-probs. Two engines share one sampling loop:

- ``fused`` (Qwen2 and Llama architectures): a minimal decoder written against the HF modules' own weights
  (embedding, RMSNorm, q/k/v/o, SwiGLU MLP, RoPE table taken from the model's rotary module). The KV cache
  is one tensor per layer allocated once at full length; each step runs one matmul per projection, attends
  over the filled prefix, and computes logits for the last position only. There is no logits-processor
  chain, no per-step cache bookkeeping and no host sync except an all-finished check every 8 steps. The
  prefill runs each distinct prompt once and copies its keys and values into the cache rows of its
  ``num_samples`` completions (GRPO's G samples of one prompt share one prefill); it runs the prompts in
  chunks of about 256 tokens, which keeps its activations small enough for the allocator to reuse.
- ``hf``: any other causal LM, through its own ``forward`` with a ``transformers.StaticCache`` and
  ``logits_to_keep=1``.

``engine="auto"`` takes ``fused`` when the architecture allows it. Greedy decoding of both engines equals
``model.generate`` token for token on the built-in presets (tests/lm/test_generate.py).

Log-probs returned (``Generation.logp``): log softmax(logits / temperature)[token], in float32, the same
quantity ``lm.logprobs.completion_logprobs`` recomputes at the same temperature. Top-k and top-p only restrict
*which* tokens may be drawn: they are not folded into ``logp``. So with top-k/top-p the returned log-prob of a
token is below the log-prob under the truncated distribution it was drawn from (by the log of the kept mass),
and the ratio pi/pi_old of a later update compares the two temperature-scaled distributions, as PPO expects.
With ``greedy=True`` ``logp`` is likewise log softmax(logits / temperature) of the argmax token.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradascent.core.logits import token_logprobs
from gradascent.errors import ConfigError, DataError
from gradascent.lm import onednn
from gradascent.lm.models import check_token_ids, eval_mode, position_ids_from_mask, resolve_dtype
from gradascent.lm.tokenizers import decode_completions, encode_prompts, eos_token_ids

Engine = Literal["auto", "fused", "hf"]
_CHECK_EVERY = 8  # steps between two all-finished checks (each one a host sync on a GPU)
_PREFILL_TOKENS = 256  # prompt tokens (padding included) per chunk of the fused engine's prefill


@dataclass(frozen=True)
class Generation:
    """The result of ``generate``. N = B * num_samples rows; the samples of one prompt are contiguous.

    Attributes:
        prompt_ids: (N, P) long, left-padded prompts.
        prompt_mask: (N, P) bool, True on real prompt tokens.
        completion_ids: (N, T) long, T <= max_new_tokens (the loop stops once every row has ended);
            ``pad_token_id`` after a row's end.
        completion_mask: (N, T) bool, True on sampled tokens up to and including the EOS that ended the row.
        logp: (N, T) float32 log softmax(logits / temperature) of each sampled token; 0 where the mask is False.
        finished: (N,) bool, True where the row ended with an EOS (False: cut at max_new_tokens).
        prompt_index: (N,) long, the input prompt each row continues.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    logp: Tensor
    finished: Tensor
    prompt_index: Tensor

    @property
    def input_ids(self) -> Tensor:
        """(N, P + T) prompt and completion side by side."""
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> Tensor:
        """(N, P + T) bool mask of ``input_ids``."""
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    @property
    def lengths(self) -> Tensor:
        """(N,) long, number of completion tokens of each row (EOS included)."""
        return self.completion_mask.sum(-1)


# --- sampling one step -------------------------------------------------------------------------------


def filter_logits(z: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Set to -inf every logit outside the top-k and outside the nucleus of mass top_p.

    Nucleus: tokens sorted by probability are kept while the mass *before* them is below ``top_p``, so the
    most likely token is always kept and the kept set is the smallest whose mass reaches ``top_p``.
    ``top_k=0`` and ``top_p=1`` switch the filters off. Shapes: (N, V) -> (N, V).
    """
    if top_k > 0 and top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        probs = torch.softmax(sorted_z, dim=-1)
        mass_before = probs.cumsum(-1) - probs
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        z = z.masked_fill(drop, float("-inf"))
    return z


def sample_tokens(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw one token per row from softmax(logits / temperature) restricted by top-k / top-p.

    Returns (tokens (N,) long, logp (N,) float32 = log softmax(logits / temperature)[token]).
    """
    z = logits.float()
    if greedy:
        tok = z.argmax(-1)
    else:
        zf = filter_logits(z / temperature if temperature != 1.0 else z, top_k, top_p)
        probs = torch.softmax(zf, dim=-1)
        u = torch.rand(probs.shape[0], dtype=torch.float64, device=probs.device, generator=generator)
        tok = inverse_cdf(probs, u)
    return tok, token_logprobs(z, tok, temperature)


def inverse_cdf(probs: Tensor, u: Tensor) -> Tensor:
    """The token each row draws from ``probs`` (N, V) with one uniform ``u`` (N,) in [0, 1): the first j whose
    cumulative mass exceeds u times the row's mass, so token j has probability probs[j] / sum(probs).

    Cumulated in float64. A token of probability 0 is never drawn: its cumulative mass equals its
    predecessor's, which u * mass already reached. Nor can rounding step past the last token: for u <= 1 - 2^-53
    (the largest float64 below 1) the rounded product u * mass stays below mass. Same distribution as
    ``torch.multinomial(probs, 1)``, with one uniform a row instead of one exponential a token (15 against 115 us
    for the 64 x 99 draws of a decoding step, BENCHMARKS.md).
    """
    cdf = probs.double().cumsum(-1)
    return torch.searchsorted(cdf, u.double()[:, None] * cdf[:, -1:], right=True).squeeze(-1)


# --- decoders: prefill the prompt, then one token at a time ------------------------------------------


class _FusedDecoder:
    """Qwen2 / Llama forward over the model's own weights with a pre-allocated cache (see module docstring).

    Weights are prepared once per call, in exact re-arrangements of the same computation:

    - q/k/v and gate/up concatenated into one matmul each; residual additions fused into the o and down
      matmuls (``addmm``, or oneDNN's binary post-op when packed, see below); stored transposed (in, out)
      for plain ``x @ W`` matmuls when not packed;
    - each RMSNorm's weight folded into the projection after it: RMSNorm(x) * w @ W^T = RMSNorm_1(x) @ (W * w)^T;
    - the attention scale 1/sqrt(D) folded into the q projection (RoPE is linear, so it commutes);
    - the two halves of every q and k head interleaved, so that RoPE's rotate-half becomes one complex
      multiplication per step. q and k are permuted alike, so every q.k product, hence the attention, is
      unchanged; v is left as it is.

    Cache per layer: k, v of shape (N, H_kv, T_max, D); column j holds token j of the sequence (prompt padding
    included) and ``bias`` (N, T_max), 0 on the columns that may be attended to and -inf elsewhere, is added to
    the decoding steps' attention scores.

    In float32 on a CPU, the weights are also packed once into a BLAS's blocked layout (``packed_kernel``):
    a plain matmul re-packs its right operand on every call, which for the (N=64)-row matmuls of decoding
    costs about as much as the product itself. MKL's packed products (``mkl._mkl_linear``, for N rows; other
    row counts, the prefill's, run MKL's plain product over the same prepared weight) round as ``F.linear``
    does; oneDNN's (``mkldnn._linear_pointwise``) are the same products with other rounding.
    """

    def __init__(self, model: nn.Module, n_rows: int, max_len: int, device: torch.device, dtype: torch.dtype) -> None:
        cfg = model.config
        base = model.base_model
        self.n_heads = Hq = int(cfg.num_attention_heads)
        self.n_kv = Hkv = int(cfg.num_key_value_heads)
        self.head_dim = D = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.eps = float(cfg.rms_norm_eps)
        self.dtype = dtype
        # Row order of one head after interleaving its halves: 0, D/2, 1, D/2 + 1, ...
        inter = torch.stack([torch.arange(D // 2), torch.arange(D // 2, D)], dim=1).flatten()
        q_rows = (torch.arange(Hq)[:, None] * D + inter).flatten()
        k_rows = (torch.arange(Hkv)[:, None] * D + inter).flatten()
        scale = D ** -0.5

        def f32(t: Tensor) -> Tensor:
            return t.detach().to(device=device, dtype=torch.float32)

        self.n_rows = n_rows
        self.packed = packed_kernel() if dtype == torch.float32 and device.type == "cpu" else None

        def prep(weight: Tensor, norm: Tensor | None = None, own: bool = False) -> Any:
            """``own``: ``weight`` is a fresh buffer of ours, which the norm may scale in place."""
            if norm is not None:
                weight = weight.mul_(norm[None, :]) if own else weight * norm[None, :]
            if self.packed == "mkl":  # MKL's packed (out, in) for n_rows-row products, and the weight itself.
                # torch sizes the packed buffer with ~8.8 MiB of slack per weight that MKL leaves untouched:
                # resident memory grows by about the weight's own size (50 packed 512 x 256: +27 MiB RSS).
                weight = weight.contiguous()
                return torch.ops.mkl._mkl_reorder_linear_weight(weight, n_rows), weight
            if self.packed == "onednn":  # (out, in) in oneDNN's layout, tuned for n_rows-row products
                return torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), n_rows)
            return weight.t().contiguous().to(dtype)  # (in, out)

        self.embed = base.embed_tokens.weight.detach().to(device=device, dtype=dtype)
        self.lm_head = prep(f32(model.get_output_embeddings().weight), f32(base.norm.weight))  # (H, V)
        self.layers = []
        for layer in base.layers:
            att, mlp = layer.self_attn, layer.mlp
            # [q; k; v] with q and k's rows interleaved, written once into one buffer; q scaled there
            wq, wk, wv = f32(att.q_proj.weight), f32(att.k_proj.weight), f32(att.v_proj.weight)
            qkv = torch.empty(wq.shape[0] + wk.shape[0] + wv.shape[0], wq.shape[1], device=device)
            torch.index_select(wq, 0, q_rows.to(device), out=qkv[: wq.shape[0]])
            torch.index_select(wk, 0, k_rows.to(device), out=qkv[wq.shape[0]: wq.shape[0] + wk.shape[0]])
            qkv[wq.shape[0] + wk.shape[0]:] = wv
            qkv[: wq.shape[0]] *= scale
            qkv_b = None
            if att.q_proj.bias is not None:
                bq, bk, bv = f32(att.q_proj.bias)[q_rows] * scale, f32(att.k_proj.bias)[k_rows], f32(att.v_proj.bias)
                qkv_b = torch.cat([bq, bk, bv]).to(dtype)
            o_b = None if att.o_proj.bias is None else f32(att.o_proj.bias).to(dtype)
            self.layers.append(dict(
                qkv=prep(qkv, f32(layer.input_layernorm.weight), own=True), qkv_b=qkv_b,
                o=prep(f32(att.o_proj.weight)), o_b=o_b,
                gate_up=prep(torch.cat([f32(mlp.gate_proj.weight), f32(mlp.up_proj.weight)]),
                             f32(layer.post_attention_layernorm.weight), own=True),
                down=prep(f32(mlp.down_proj.weight)),
            ))
        # RoPE as complex rotations (T_max, D/2), from the model's own rotary module (any scaling included).
        positions = torch.arange(max_len, device=device)[None]
        cos, sin = base.rotary_emb(torch.zeros(1, 1, device=device, dtype=torch.float32), positions)
        self.rot = torch.complex(cos[0, :, : D // 2], sin[0, :, : D // 2])
        if dtype != torch.float32:  # complex bfloat16 does not exist: rotate in complex64, store in dtype
            self.rot = self.rot.to(torch.complex64)
        # Left unfilled: every column is written (prefill: all rows, columns < P; each step: its column) before
        # any query reads it, and no query reads past the last written column.
        shape = (n_rows, Hkv, max_len, D)
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in base.layers]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in base.layers]
        self.bias = torch.full((n_rows, max_len), float("-inf"), dtype=dtype, device=device)
        self.filled = 0

    def _norm(self, x: Tensor) -> Tensor:
        """RMSNorm without its weight (folded into the next matmul)."""
        return F.rms_norm(x, (x.shape[-1],), None, self.eps)

    def _linear(self, x: Tensor, w: Any, bias: Tensor | None = None, residual: Tensor | None = None) -> Tensor:
        """x @ W (+ bias) (+ residual), with W prepared by ``prep``."""
        if self.packed == "mkl":
            y = torch.ops.mkl._mkl_linear(x, w[0], w[1], bias, self.n_rows)
            return y if residual is None else y.add_(residual)
        if self.packed == "onednn":
            if residual is not None:
                return torch.ops.mkldnn._linear_pointwise.binary(x, residual, w, bias, "add")
            return torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")
        if residual is not None:
            return torch.addmm(residual if bias is None else residual + bias, x, w)
        return x @ w if bias is None else torch.addmm(bias, x, w)

    def _forward(self, ids: Tensor, pos: Tensor, prefill_mask: Tensor | None = None, repeats: int = 1,
                 first: int = 0) -> Tensor:
        """Feed ids (n, T) at positions pos (n, T) into cache columns [filled, filled + T); logits of the last.

        Decoding (``prefill_mask`` None): one token for each of the N cache rows. Prefill: n distinct prompts,
        prompts ``first`` .. ``first + n - 1`` of the batch, under ``prefill_mask`` (n, 1, T, T); their keys and
        values fill the cache ``repeats`` times each (prompt i: rows i * repeats ... i * repeats + repeats - 1),
        and so do the logits returned. The caller advances ``filled``.
        """
        n, T = ids.shape
        Hq, Hkv, D = self.n_heads, self.n_kv, self.head_dim
        start, end = self.filled, self.filled + T
        rot = self.rot[pos].unsqueeze(2)  # (n, T, 1, D/2) complex
        if prefill_mask is None:  # decode: one query per row over the filled prefix, (N, 1, 1, end) additive bias
            bias = self.bias[:, None, None, :end]
        x = F.embedding(ids, self.embed).view(n * T, -1)  # (n T, H) residual stream
        last_layer = len(self.layers) - 1
        for i, p in enumerate(self.layers):
            h = self._norm(x)
            qkv = self._linear(h, p["qkv"], p["qkv_b"]).view(n, T, Hq + 2 * Hkv, D)
            qk = qkv[:, :, : Hq + Hkv].float().reshape(n, T, Hq + Hkv, D // 2, 2)
            qk = torch.view_as_real(torch.view_as_complex(qk) * rot).flatten(-2).to(self.dtype)  # RoPE
            q = qk[:, :, :Hq].transpose(1, 2)  # (n, Hq, T, D), already scaled by 1/sqrt(D)
            k, v = qk[:, :, Hq:].transpose(1, 2), qkv[:, :, Hq + Hkv:].transpose(1, 2)  # (n, Hkv, T, D)
            if prefill_mask is None:
                self.k[i][:, :, start:end], self.v[i][:, :, start:end] = k, v
                k, v = self.k[i][:, :, :end], self.v[i][:, :, :end]  # (N, Hkv, end, D)
                # grouped-query attention without repeating k/v: (N, Hkv, Hq/Hkv, D) queries
                scores = q.reshape(n, Hkv, Hq // Hkv, D) @ k.transpose(-1, -2) + bias  # (N, Hkv, Hq/Hkv, end)
                att = (torch.softmax(scores, dim=-1) @ v).reshape(n, Hq * D)  # accumulates in float32
            else:  # the cache is empty before the prefill: attend over this call's keys and values
                # row j of the cache gets prompt j // repeats, copied through a (n, repeats, ...) view
                rows = slice(first * repeats, (first + n) * repeats)
                self.k[i][rows, :, start:end].unflatten(0, (n, repeats)).copy_(k.unsqueeze(1))
                self.v[i][rows, :, start:end].unflatten(0, (n, repeats)).copy_(v.unsqueeze(1))
                if i == last_layer and T > 1:  # only the last position's output is read past the last layer's
                    # keys and values: its attention, o_proj and MLP run for that one query per prompt
                    q, prefill_mask = q[:, :, -1:], prefill_mask[:, :, -1:]
                    x, T = x.view(n, T, -1)[:, -1].contiguous(), 1
                att = F.scaled_dot_product_attention(q, k, v, attn_mask=prefill_mask, enable_gqa=Hq != Hkv,
                                                     scale=1.0)
                att = att.transpose(1, 2).reshape(n * T, Hq * D)
            x = self._linear(att, p["o"], p["o_b"], residual=x)
            gate, up = self._linear(self._norm(x), p["gate_up"]).chunk(2, dim=-1)
            x = self._linear(F.silu(gate) * up, p["down"], residual=x)
        last = x.view(n, T, -1)[:, -1]  # (n, H)
        logits = self._linear(self._norm(last), self.lm_head)  # (n, V)
        return logits.repeat_interleave(repeats, dim=0) if repeats > 1 else logits

    def prefill(self, ids: Tensor, mask: Tensor, pos: Tensor, repeats: int = 1) -> Tensor:
        """The B distinct prompts (B, P), each run once and copied into ``repeats`` cache rows."""
        if self.filled:
            raise RuntimeError("prefill runs once, on an empty cache")
        T = ids.shape[1]
        self.bias[:, :T].masked_fill_(mask.repeat_interleave(repeats, dim=0), 0.0)
        # causal over the prompt, padding hidden, each token always sees itself (no empty softmax row)
        causal = torch.ones(T, T, dtype=torch.bool, device=ids.device).tril()
        eye = torch.eye(T, dtype=torch.bool, device=ids.device)
        prefill_mask = ((causal[None] & mask[:, None, :]) | eye[None])[:, None]  # (B, 1, T, T)
        # In chunks of prompts (attention stays within a prompt, so the result is the same): intermediates of
        # about _PREFILL_TOKENS tokens, whose memory the allocator hands on to the next chunk, where one pass
        # over all B * T tokens takes fresh pages from the system for each layer's (B * T, 2 * mlp) activations
        # (64 prompts of 12 tokens on qwen2-14m: ~10,000 page faults and 150 ms, against none and 80 ms).
        step = max(1, _PREFILL_TOKENS // T)
        step = -(-ids.shape[0] // -(-ids.shape[0] // step))  # chunks of even size: 64 prompts by 22, 21, 21
        logits = torch.cat([self._forward(ids[a:a + step], pos[a:a + step], prefill_mask[a:a + step], repeats, a)
                            for a in range(0, ids.shape[0], step)])
        self.filled = T
        return logits

    def step(self, tok: Tensor, pos: Tensor) -> Tensor:
        self.bias[:, self.filled] = 0.0
        logits = self._forward(tok[:, None], pos[:, None])
        self.filled += 1
        return logits


class _HFDecoder:
    """Any causal LM through its own forward, with a ``transformers.StaticCache`` of the full length."""

    def __init__(self, model: nn.Module, n_rows: int, max_len: int, device: torch.device) -> None:
        from transformers import StaticCache

        self.model = model
        self.cache = StaticCache(config=model.config, max_cache_len=max_len)
        self.mask = torch.zeros(n_rows, max_len, dtype=torch.long, device=device)
        self.filled = 0

    def _forward(self, ids: Tensor, pos: Tensor) -> Tensor:
        end = self.filled + ids.shape[1]
        out = self.model(input_ids=ids, attention_mask=self.mask[:, :end], position_ids=pos, cache=self.cache,
                         use_cache=True, logits_to_keep=1)
        self.filled = end
        return out.logits[:, -1]

    def prefill(self, ids: Tensor, mask: Tensor, pos: Tensor, repeats: int = 1) -> Tensor:
        ids, mask, pos = (t.repeat_interleave(repeats, dim=0) for t in (ids, mask, pos))
        self.mask[:, : ids.shape[1]] = mask.long()
        return self._forward(ids, pos)

    def step(self, tok: Tensor, pos: Tensor) -> Tensor:
        self.mask[:, self.filled] = 1
        return self._forward(tok[:, None], pos[:, None])


def packed_kernel() -> Literal["mkl", "onednn"] | None:
    """The BLAS whose packed float32 products the fused engine runs on a CPU: oneDNN's where ``lm.onednn``
    routes the library's linears through it (``onednn.enabled()``: by default x86 CPUs not made by Intel),
    else MKL's where this torch has it, else None (plain matmuls over transposed weights)."""
    if onednn.enabled() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight"):
        return "onednn"
    return "mkl" if _mkl_packing() else None


@functools.cache
def _mkl_packing() -> bool:
    """Whether this torch has MKL's packed linear (internal ops: checked on a small product)."""
    if not torch.backends.mkl.is_available():
        return False
    try:
        w = torch.ones(4, 3)
        y = torch.ops.mkl._mkl_linear(torch.ones(2, 3), torch.ops.mkl._mkl_reorder_linear_weight(w, 2), w, None, 2)
        return bool(torch.equal(y, torch.full((2, 4), 3.0)))
    except (AttributeError, RuntimeError, TypeError):
        return False


def fused_supported(model: nn.Module) -> bool:
    """Whether the fused engine can run ``model``: Qwen2 / Llama, SiLU MLP without bias, full attention,
    a RoPE whose frequencies do not depend on the sequence length, a plain ``nn.Embedding``, and plain
    ``nn.Linear`` projections and LM head (not LoRA adapters or quantized layers)."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in ("qwen2", "llama"):
        return False
    if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "mlp_bias", False):
        return False
    if any(t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])):
        return False
    if getattr(cfg, "pretraining_tp", 1) not in (None, 1):
        return False
    rotary = getattr(model.base_model, "rotary_emb", None)
    rope_type = getattr(rotary, "rope_type", None)
    if not (isinstance(rope_type, str) and rope_type in ("default", "linear", "llama3")):
        return False
    # The engine reads each projection's weight directly: a layer that computes something else (a LoRA
    # adapter, a quantized or otherwise replaced linear) would be silently left out, so it needs engine 'hf'.
    layers = getattr(model.base_model, "layers", None)
    if not layers or type(model.get_output_embeddings()) is not nn.Linear:
        return False
    if type(model.get_input_embeddings()) is not nn.Embedding:
        return False
    return all(type(getattr(block, part)) is nn.Linear
               for layer in layers for block, names in ((layer.self_attn, _ATTN), (layer.mlp, _MLP)) for part in names)


_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")


# --- the sampling loop -------------------------------------------------------------------------------


def _is_id(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_args(max_new_tokens: int, num_samples: int, temperature: float, top_k: int, top_p: float) -> None:
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if num_samples < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples}")
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0 (use greedy=True for argmax decoding), got {temperature}")
    if top_k < 0:
        raise ConfigError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ConfigError(f"top_p must be in (0, 1] (1 = off), got {top_p}")


def generate(
    model: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    *,
    max_new_tokens: int,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    num_samples: int = 1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    engine: Engine = "auto",
) -> Generation:
    """Sample ``num_samples`` completions of each prompt.

    Args:
        model: a causal LM (``transformers``); it is put in eval mode for the call and restored after.
        prompt_ids: (B, P) long, left-padded (see ``lm.tokenizers.encode_prompts``).
        prompt_mask: (B, P) bool, True on real tokens. Every row needs at least one.
        max_new_tokens: the most tokens sampled per completion.
        eos_token_ids: ids that end a completion (any of them; may be empty: always max_new_tokens).
        pad_token_id: id written after a completion's end (may equal an EOS id: the mask tells them apart).
        num_samples: completions per prompt (GRPO's group size G); rows of one prompt are contiguous.
        temperature: > 0; logits are divided by it before sampling and for ``logp``.
        top_k: sample among the k most likely tokens only (0 = off).
        top_p: sample among the smallest set of tokens whose mass reaches top_p (1 = off).
        greedy: argmax instead of sampling (top-k/top-p ignored).
        generator: torch.Generator for reproducible draws (on the sampling device).
        device: where to run (default: the model's device). The fused engine copies the weights there.
        dtype: compute dtype of the fused engine (default: the model's); e.g. bfloat16 sampling of a
            float32 policy. The hf engine runs the model as it is.
        engine: 'auto' | 'fused' | 'hf' (see module docstring).

    Returns:
        ``Generation`` with N = B * num_samples rows.

    Raises:
        DataError: an empty or right-padded prompt row, or prompt + max_new_tokens beyond the model's context.
        ConfigError: an argument out of range, or engine='fused' on an unsupported architecture.
    """
    _check_args(max_new_tokens, num_samples, temperature, top_k, top_p)
    if prompt_ids.dim() != 2 or prompt_ids.shape != prompt_mask.shape:
        raise DataError(f"prompt_ids {tuple(prompt_ids.shape)} and prompt_mask {tuple(prompt_mask.shape)} must be "
                        "two (B, P) tensors of one shape")
    prompt_mask = prompt_mask.bool()
    if prompt_ids.shape[0] == 0:
        raise DataError("no prompts to generate from")
    check_token_ids(prompt_ids, model, "prompt_ids")
    if engine not in ("auto", "fused", "hf"):
        raise ConfigError(f"engine must be 'auto', 'fused' or 'hf', got {engine!r}")
    if not _is_id(pad_token_id):
        raise ConfigError(f"pad_token_id must be a token id (an int), got {pad_token_id!r}; a tokenizer without "
                          "one: see lm.tokenizers.ensure_pad_token")
    if isinstance(eos_token_ids, (numbers.Number, str)) or not all(_is_id(e) for e in eos_token_ids):
        raise ConfigError(f"eos_token_ids must be a list of token ids, got {eos_token_ids!r}")
    if not bool(prompt_mask.any(-1).all()):
        raise DataError("a prompt is empty (all padding); every prompt needs at least one token")
    if not bool(prompt_mask[:, -1].all()):
        raise DataError("prompts must be left-padded (the last column real for every row); see encode_prompts")
    B, P = prompt_ids.shape
    ctx = getattr(model.config, "max_position_embeddings", None)
    lengths = prompt_mask.sum(-1)
    longest = int(lengths.max())
    if ctx is not None and longest + max_new_tokens > ctx:
        raise DataError(f"row {int(lengths.argmax())} of prompt_ids, a prompt of {longest} tokens, plus "
                        f"max_new_tokens={max_new_tokens} exceeds the model's context of {ctx} tokens")
    param = next(model.parameters())
    run_device = torch.device(device) if device is not None else param.device
    run_dtype = resolve_dtype(dtype) or param.dtype
    if engine == "auto":
        engine = "fused" if fused_supported(model) else "hf"
    if engine == "fused" and not fused_supported(model):
        raise ConfigError(f"engine 'fused' does not support this {type(model).__name__} (its architecture, or "
                          "layers other than plain linears, such as LoRA adapters); use engine='hf' or 'auto'")
    if engine == "hf" and (run_device != param.device or run_dtype != param.dtype):
        raise ConfigError("engine 'hf' runs the model where it is: move or cast the model instead of passing "
                          "device/dtype")

    with torch.inference_mode(), eval_mode(model):
        ids = prompt_ids.to(run_device).repeat_interleave(num_samples, dim=0)  # (N, P)
        mask = prompt_mask.to(run_device).repeat_interleave(num_samples, dim=0)
        N = ids.shape[0]
        max_len = P + max_new_tokens - 1
        if engine == "fused":
            dec: Any = _FusedDecoder(model, N, max_len, run_device, run_dtype)
        else:
            dec = _HFDecoder(model, N, max_len, run_device)
        eos = torch.tensor(list(eos_token_ids), dtype=torch.long, device=run_device)
        out_ids = torch.full((N, max_new_tokens), pad_token_id, dtype=torch.long, device=run_device)
        out_logp = torch.zeros(N, max_new_tokens, dtype=torch.float32, device=run_device)
        out_mask = torch.zeros(N, max_new_tokens, dtype=torch.bool, device=run_device)
        done = torch.zeros(N, dtype=torch.bool, device=run_device)
        next_pos = mask.sum(-1)  # position of the first completion token: prompts count from 0
        prompts, prompts_mask = prompt_ids.to(run_device), prompt_mask.to(run_device)
        logits = dec.prefill(prompts, prompts_mask, position_ids_from_mask(prompts_mask), num_samples)
        steps = max_new_tokens
        for t in range(max_new_tokens):
            tok, logp = sample_tokens(logits, temperature, top_k, top_p, greedy, generator)
            # Every row's draw is written; the columns after a row's end are set to pad / 0 after the loop.
            out_ids[:, t], out_logp[:, t] = tok, logp
            torch.logical_not(done, out=out_mask[:, t])
            if eos.numel():
                done |= torch.isin(tok, eos)
            if t == max_new_tokens - 1:
                break
            if t % _CHECK_EVERY == _CHECK_EVERY - 1 and bool(done.all()):
                steps = t + 1
                break
            logits = dec.step(tok, next_pos + t)
        out_ids.masked_fill_(~out_mask, pad_token_id)
        out_logp.masked_fill_(~out_mask, 0.0)
        if bool(done.all()):  # trim the columns after the longest completion
            steps = min(steps, int(out_mask.sum(-1).max()))
        prompt_index = torch.arange(B, device=run_device).repeat_interleave(num_samples)
    # Clone out of inference mode so that callers may feed these tensors to autograd.
    return Generation(
        prompt_ids=ids.clone(), prompt_mask=mask.clone(),
        completion_ids=out_ids[:, :steps].clone(), completion_mask=out_mask[:, :steps].clone(),
        logp=out_logp[:, :steps].clone(), finished=done.clone(), prompt_index=prompt_index.clone(),
    )


def generate_text(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    **kwargs: Any,
) -> tuple[Generation, list[str]]:
    """Encode ``prompts``, ``generate`` (keyword arguments as there; EOS and pad ids from the tokenizer and the
    model unless given), and decode each completion without its EOS. Returns (generation, texts)."""
    ids, mask = encode_prompts(tokenizer, prompts)
    eos = kwargs.pop("eos_token_ids", None)
    eos = eos if eos is not None else eos_token_ids(tokenizer, model)  # generate checks it
    pad = kwargs.pop("pad_token_id", tokenizer.pad_token_id)
    gen = generate(model, ids, mask, max_new_tokens=max_new_tokens, eos_token_ids=eos, pad_token_id=pad, **kwargs)
    texts = decode_completions(tokenizer, gen.completion_ids.cpu(), gen.completion_mask.cpu(), strip_eos=eos)
    return gen, texts
