"""Causal language models: built-in presets, loading from a local directory, saving in the same format.

A model is any ``transformers`` causal LM (``AutoModelForCausalLM``); a saved model is a directory written by
``save_pretrained`` (config.json, model.safetensors, generation_config.json) plus the tokenizer's files, so
it loads back with ``load_model(dir)`` or with plain ``transformers`` (``AutoModelForCausalLM``, and for the
built-in tokenizer ``PreTrainedTokenizerFast``, not ``AutoTokenizer``: see ``load_tokenizer``). Nothing is
downloaded: a model is either a preset built from a config with random weights, or a directory on disk.

Presets (parameter counts with the 99-token character vocabulary of ``char_tokenizer``, embeddings tied;
``head_dim`` is hidden / heads, RoPE theta 10,000, context 512 tokens):

    name         arch    hidden  layers  heads  kv-heads  mlp    params
    qwen2-micro  qwen2       32       2      4         2     64    ~22 k   (tests)
    llama-micro  llama       32       2      4         2     64    ~22 k   (tests)
    qwen2-1m     qwen2      128       4      4         2    512    ~1.0 M
    llama-1m     llama      128       4      4         2    512    ~1.0 M
    qwen2-5m     qwen2      256       7      4         2    768    ~5.5 M
    llama-5m     llama      256       7      4         2    768    ~5.5 M
    qwen2-14m    qwen2      384       8      6         2   1152    ~13.8 M

With a 32k vocabulary the tied embedding adds 32,000 x hidden parameters (8.2 M for hidden 256).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gradascent.errors import CheckpointError, ConfigError, DataError, GradascentWarning
from gradascent.lm.tokenizers import char_tokenizer, ensure_pad_token
from gradascent.run.files import share_tensors

PRESETS: dict[str, dict[str, Any]] = {
    "qwen2-micro": dict(arch="qwen2", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=64),
    "llama-micro": dict(arch="llama", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=64),
    "qwen2-1m": dict(arch="qwen2", hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, intermediate_size=512),
    "llama-1m": dict(arch="llama", hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, intermediate_size=512),
    "qwen2-5m": dict(arch="qwen2", hidden_size=256, num_hidden_layers=7, num_attention_heads=4,
                     num_key_value_heads=2, intermediate_size=768),
    "llama-5m": dict(arch="llama", hidden_size=256, num_hidden_layers=7, num_attention_heads=4,
                     num_key_value_heads=2, intermediate_size=768),
    "qwen2-14m": dict(arch="qwen2", hidden_size=384, num_hidden_layers=8, num_attention_heads=6,
                      num_key_value_heads=2, intermediate_size=1152),
}

PRESET_CONTEXT = 512  # tokens: the presets' max_position_embeddings

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """'float32' | 'bfloat16' | 'float16' | a torch dtype | None (keep the model's own)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"dtype {dtype!r} is not allowed; expected one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def preset_config(name: str, vocab_size: int, pad_token_id: int | None = None,
                  eos_token_id: int | list[int] | None = None, max_position_embeddings: int = PRESET_CONTEXT) -> Any:
    """The ``transformers`` config of preset ``name`` for a vocabulary of ``vocab_size`` tokens."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; expected a local model directory or one of "
                          f"{', '.join(PRESETS)}")
    spec = dict(PRESETS[name])
    arch = spec.pop("arch")
    common = dict(vocab_size=vocab_size, max_position_embeddings=max_position_embeddings,
                  tie_word_embeddings=True, pad_token_id=pad_token_id, eos_token_id=eos_token_id,
                  bos_token_id=None, rms_norm_eps=1e-6, initializer_range=0.02, **spec)
    if arch == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(**common)
    from transformers import LlamaConfig

    return LlamaConfig(**common)


def build_model(name: str, tokenizer: Any = None, seed: int = 0,
                max_position_embeddings: int = PRESET_CONTEXT) -> nn.Module:
    """A randomly initialised preset model sized to ``tokenizer`` (default: ``char_tokenizer()``).

    The initialisation draws from its own generator seeded by ``seed``; the global torch RNG is untouched.
    """
    from transformers import AutoModelForCausalLM

    tokenizer = ensure_pad_token(tokenizer if tokenizer is not None else char_tokenizer())
    cfg = preset_config(name, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id,
                        max_position_embeddings)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _check_model_dir(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"model directory {path} does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory; a model is a directory written by save_pretrained")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"no model in {path}: config.json is missing (expected a directory written by "
                              "save_pretrained, or a preset name)")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path / 'config.json'} is not valid JSON ({exc}); the model directory is "
                              "damaged") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path / 'config.json'} holds a JSON {type(config).__name__}, not a model config "
                              "(an object); the model directory is damaged")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise CheckpointError(f"no model weights in {path}: no *.safetensors file")


def _has_tokenizer(path: Path) -> bool:
    return any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json",
                                              "tokenizer.model"))


# tokenizer_config.json classes that mean "the pipeline in tokenizer.json, as it is" (the built-in tokenizers).
GENERIC_TOKENIZER_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """The tokenizer saved in directory ``path``, with a pad token ensured.

    A tokenizer saved as the generic class (``GENERIC_TOKENIZER_CLASSES``, as the built-in tokenizers are)
    loads as that class, from its tokenizer.json as it is: ``AutoTokenizer`` of transformers 5 would swap in
    the model type's own class for some types (Qwen2's), whose pre-tokenizer drops the character tokenizer's
    spaces and newlines. Any other tokenizer loads with ``AutoTokenizer``."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    p = Path(path)
    if not p.is_dir() or not _has_tokenizer(p):
        raise CheckpointError(f"no tokenizer in {p}: tokenizer.json / tokenizer_config.json is missing")
    # tokenizer.json with no tokenizer_config.json names no class: it too is loaded as it is
    generic = (p / "tokenizer.json").is_file() and (_saved_tokenizer_class(p) in GENERIC_TOKENIZER_CLASSES
                                                    or not (p / "tokenizer_config.json").is_file())
    try:
        if generic:
            tok = PreTrainedTokenizerFast.from_pretrained(str(p))
        else:
            tok = AutoTokenizer.from_pretrained(str(p), trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - transformers also reads config.json here: name the directory
        raise CheckpointError(f"cannot load the tokenizer in {p}: {type(exc).__name__}: {exc}") from None
    char_like = len(tok) == len(_char_vocab()) and tok.get_vocab() == _char_vocab()  # the length first: cheap
    if char_like and (not generic or tok.eos_token_id is None):
        # The built-in character tokenizer, saved after it had been loaded as a model-specific class (as
        # AutoTokenizer did for qwen2 directories before 2026-12-03; that class drops spaces and newlines), or
        # without the tokenizer_config.json that says which token is EOS.
        how = (f"saved as {type(tok).__name__}, which drops spaces and newlines" if not generic
               else "without its tokenizer_config.json (which names the EOS and pad tokens)")
        warnings.warn(f"{p} holds the built-in character tokenizer {how}; it is loaded as the character tokenizer "
                      "(save the model again to store it so)", GradascentWarning, stacklevel=2)
        tok = char_tokenizer()
    try:
        return ensure_pad_token(tok)
    except DataError as exc:
        raise DataError(f"the tokenizer in {p}: {exc}") from None


@functools.lru_cache(maxsize=1)
def _char_vocab() -> dict[str, int]:
    return char_tokenizer().get_vocab()


def _saved_tokenizer_class(path: Path) -> str | None:
    """``tokenizer_class`` of ``path/tokenizer_config.json``, or None where it is missing or unreadable."""
    try:
        config = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    name = config.get("tokenizer_class") if isinstance(config, dict) else None
    return name if isinstance(name, str) else None


def embedding_rows(model: nn.Module) -> int:
    """Rows of ``model``'s input embedding, also where an adapter wraps it (peft's layers have no
    ``num_embeddings``, only the wrapped layer's ``weight``)."""
    emb = model.get_input_embeddings()
    rows = getattr(emb, "num_embeddings", None)
    return int(rows) if rows is not None else int(emb.weight.shape[0])


def check_vocab(model: nn.Module, tokenizer: Any, where: str | os.PathLike[str] | None = None) -> None:
    """Raise CheckpointError if the tokenizer can produce ids the model's embedding has no row for; ``where``
    (the model's directory or preset) is named in the message."""
    n_rows = embedding_rows(model)
    if len(tokenizer) > n_rows:
        of = f" of {where}" if where is not None else ""
        raise CheckpointError(f"tokenizer/model vocabulary mismatch{of}: the tokenizer has {len(tokenizer)} tokens "
                              f"but the model's embedding has only {n_rows} rows")


def _model_dir(spec: str | os.PathLike[str]) -> Path | None:
    """None for a preset name, else the model directory ``spec`` once checked (``_check_model_dir``)."""
    path = Path(spec)
    if str(spec) in PRESETS and not path.exists():
        return None
    if not path.exists() and os.sep not in str(spec) and "/" not in str(spec):
        raise ConfigError(f"model {str(spec)!r} is neither a local directory nor a preset ({', '.join(PRESETS)})")
    _check_model_dir(path)
    return path


def tokenizer_and_context(spec: str | os.PathLike[str]) -> tuple[Any, int | None]:
    """The tokenizer ``load_model(spec)`` gives and the model's context length, without loading the weights:
    to check data against a model before a run that starts from it (a chain of stages) does any work.

    Raises what ``load_model`` raises for a missing or damaged directory, a missing tokenizer, or a tokenizer
    larger than the model's vocabulary."""
    path = _model_dir(spec)
    if path is None:
        return ensure_pad_token(char_tokenizer(PRESET_CONTEXT)), PRESET_CONTEXT
    from transformers import AutoConfig

    tokenizer = load_tokenizer(path)
    try:  # transformers' config, which maps each architecture's names (GPT-2's n_positions) onto the usual ones
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - name the directory at fault, as load_model does
        raise CheckpointError(f"cannot load the model config in {path}: {type(exc).__name__}: {exc}") from None
    n_rows = getattr(config, "vocab_size", None)
    if isinstance(n_rows, int) and len(tokenizer) > n_rows:
        raise CheckpointError(f"tokenizer/model vocabulary mismatch: the tokenizer has {len(tokenizer)} tokens but "
                              f"the model's embedding has only {n_rows} rows")
    context = getattr(config, "max_position_embeddings", None)
    return tokenizer, context if isinstance(context, int) else None


def check_weight_shapes(path: Path) -> None:
    """A one-line CheckpointError naming the first tensor whose shape in the directory's safetensors files
    differs from the one its config.json builds (an edited config, or weights of another model), found
    before ``from_pretrained`` prints its report table and raises. Only names in both are compared (a
    checkpoint may name some tensors differently); the model is built on the meta device, so nothing is
    allocated, and the weights are not read, only their headers."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
        if getattr(config, "quantization_config", None) is not None:
            return  # packed weights have other shapes than the plain model the config builds
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()}
    except Exception:  # noqa: BLE001 - not buildable here: from_pretrained says why, naming the directory
        return
    for file in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as f:
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception:  # noqa: BLE001 - a damaged file: from_pretrained's error names it
            return
        for name, shape in shapes.items():
            if name in expected and expected[name] != shape:
                raise CheckpointError(f"cannot load the model in {path}: its config.json and {file.name} disagree: "
                                      f"tensor {name} is {shape} in the file, {expected[name]} for the config")


def load_model(
    spec: str | os.PathLike[str],
    tokenizer: Any = None,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    trust_remote_code: bool = False,
) -> tuple[nn.Module, Any]:
    """Load ``(model, tokenizer)`` from a local model directory, or build preset ``spec`` with random weights.

    Args:
        spec: a directory written by ``save_model`` / ``save_pretrained``, or a name in ``PRESETS``.
        tokenizer: use this tokenizer (an object, or a directory holding one) instead of the directory's (or
            instead of ``char_tokenizer`` for a preset).
        dtype: 'float32' | 'bfloat16' | 'float16' | None (as saved; presets are float32).
        device: where to put the model (default CPU).
        seed: initialisation seed of a preset.
        trust_remote_code: passed to ``transformers``; off unless asked, so a directory cannot run code.

    Raises:
        CheckpointError: no model in the directory, no tokenizer, or a tokenizer larger than the embedding.
        ConfigError: ``spec`` is neither a directory nor a preset, or ``device`` is not one this machine has.
    """
    from transformers import AutoModelForCausalLM

    from gradascent.run.distributed import check_device

    torch_dtype = resolve_dtype(dtype)
    if device is not None:
        check_device(device)
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    path = _model_dir(spec)
    if path is None:
        model = build_model(str(spec), tokenizer, seed=seed)
        tokenizer = ensure_pad_token(tokenizer if tokenizer is not None else char_tokenizer(PRESET_CONTEXT))
    else:
        tokenizer = ensure_pad_token(tokenizer) if tokenizer is not None else load_tokenizer(path)
        if not trust_remote_code:  # a model of remote code is built by that code alone
            check_weight_shapes(path)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Loading weights" bar before a command's own output (as saving)
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=trust_remote_code,
                                                         dtype=torch_dtype)
        except Exception as exc:  # noqa: BLE001 - whatever transformers raises, name the directory at fault
            raise CheckpointError(f"cannot load the model in {path}: {type(exc).__name__}: {exc}") from None
    check_vocab(model, tokenizer, path if path is not None else spec)
    if path is not None:
        check_finite_weights(model, path)
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    if device is not None:
        model = model.to(device)
    return model, tokenizer


def check_finite_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """A CheckpointError naming the first weight of ``model`` (loaded from ``path``) that holds NaN or inf:
    such a model samples garbage or nothing, and a trainer would only fail later, as if it had diverged."""
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"the model in {path} holds NaN or inf in weight '{name}'; it cannot be used")


def save_model(model: nn.Module, tokenizer: Any, path: str | os.PathLike[str],
               state_dict: dict[str, Tensor] | None = None) -> Path:
    """Write ``model`` (safetensors) and ``tokenizer`` to directory ``path``; ``load_model(path)`` reads them back.

    ``state_dict`` replaces the model's own weights, e.g. whole tensors gathered from an FSDP2-sharded model."""
    from transformers.utils import logging as hf_logging

    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar in a trainer's output
    model.save_pretrained(str(p), safe_serialization=True, state_dict=state_dict)  # type: ignore[operator]
    share_tensors(p)  # safetensors wrote them 0600
    if tokenizer is not None:
        tokenizer.save_pretrained(str(p))
    return p


def check_token_ids(ids: Tensor, model: nn.Module, what: str = "token ids") -> None:
    """Refuse ids an embedding lookup would fail on with an opaque IndexError: not integers, or outside
    [0, vocabulary size of ``model``)."""
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise DataError(f"{what} must be an integer tensor, got {ids.dtype}")
    if ids.numel() == 0:
        return
    vocab = embedding_rows(model)
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab:
        raise DataError(f"{what} hold id {low if low < 0 else high}, outside the model's vocabulary of {vocab} "
                        "(a tokenizer of another model?)")


def position_ids_from_mask(mask: Tensor) -> Tensor:
    """Position of each token among the real ones of its row: cumsum(mask) - 1, 0 on padding.

    Left padding must not shift positions: a prompt's first real token is position 0 whatever its padding.
    Shapes: (B, T) bool -> (B, T) long.
    """
    pos = mask.long().cumsum(-1) - 1
    return pos.clamp(min=0)


def previous_token_index(mask: Tensor) -> Tensor:
    """For each column, the column of the last real token strictly before it; -1 where there is none.

    The state that predicts token t (its logits, its value) lives there; padding in the middle of a row (a
    right-padded prompt followed by its completion) moves it away from t - 1. Shapes: (B, T) bool -> (B, T) long.
    """
    B, T = mask.shape
    col = torch.arange(T, device=mask.device).expand(B, T)
    last_real = torch.where(mask, col, torch.full_like(col, -1)).cummax(dim=1).values  # inclusive
    return torch.cat([torch.full_like(last_real[:, :1], -1), last_real[:, :-1]], dim=1)


@contextlib.contextmanager
def eval_mode(model: nn.Module):  # type: ignore[no-untyped-def]
    """Temporarily put ``model`` in eval mode (no dropout), restoring its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupt: {exc}") from None
