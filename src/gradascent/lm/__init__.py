"""gradascent.lm: the language-model substrate shared by SFT, reward modelling, RLHF and GRPO.

- models: presets built from configs, loading and saving local directories (``load_model``, ``save_model``)
- tokenizers: the built-in character tokenizer, pad/EOS conventions, left-padded prompt batches
- heads: ``ValueModel`` (critic) and ``RewardModel`` over a causal-LM backbone
- generate: batched sampling with a pre-allocated KV cache (``generate`` -> ``Generation``)
- logprobs: per-token log-probs and entropies without a (B, T, V) tensor

Mask convention: bool, True = the token counts. Masks are always carried explicitly, never derived from a
pad id, so a tokenizer whose pad token is its EOS token is handled correctly.
"""

from gradascent.lm.cli import evaluate_model
from gradascent.lm.generate import Generation, filter_logits, fused_supported, generate, generate_text, sample_tokens
from gradascent.lm.heads import RewardModel, ScalarHeadModel, ValueModel, backbone_hidden_states, last_token_index
from gradascent.lm.logprobs import SequenceLogprobs, completion_logprobs, head_logprobs, sequence_logprobs
from gradascent.lm.models import (
    PRESETS,
    build_model,
    check_vocab,
    count_parameters,
    load_model,
    load_tokenizer,
    position_ids_from_mask,
    preset_config,
    previous_token_index,
    save_model,
)
from gradascent.lm.tokenizers import (
    char_tokenizer,
    decode_completions,
    encode_prompts,
    ensure_pad_token,
    eos_token_ids,
)

__all__ = [
    "PRESETS",
    "Generation",
    "RewardModel",
    "ScalarHeadModel",
    "SequenceLogprobs",
    "ValueModel",
    "backbone_hidden_states",
    "build_model",
    "char_tokenizer",
    "check_vocab",
    "completion_logprobs",
    "count_parameters",
    "decode_completions",
    "encode_prompts",
    "ensure_pad_token",
    "eos_token_ids",
    "filter_logits",
    "fused_supported",
    "generate",
    "generate_text",
    "evaluate_model",
    "head_logprobs",
    "last_token_index",
    "load_model",
    "load_tokenizer",
    "position_ids_from_mask",
    "preset_config",
    "previous_token_index",
    "sample_tokens",
    "save_model",
    "sequence_logprobs",
]
