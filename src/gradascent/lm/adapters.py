"""LoRA adapters over one frozen base model, so that several roles share its weights.

LoRA (Hu et al. 2021, arXiv:2106.09685) adds a trainable low-rank update B A (rank r, scaled by alpha / r) to
chosen linear layers and leaves the base weights frozen. RLHF uses it to keep one copy of the SFT weights
in memory for three roles:

- the policy: the base plus a trainable adapter named ``policy``;
- the reference pi_ref: the same base with every adapter switched off (``use_adapter(handle, None)``);
- the reward model: the base plus a frozen adapter named ``reward`` trained by ``gradascent rm`` with
  ``lora_r > 0``, and its scalar head.

``peft`` is an optional dependency (``pip install 'gradascent[lora]'``); without it these functions raise a
``ConfigError`` that says so. ``add_lora`` changes the model in place: the module you hold keeps working as
an ordinary ``transformers`` causal LM (``model(...)``, ``model.base_model`` for the heads) with the active
adapter applied, and the returned handle switches adapters. The fused sampling engine reads base weights
directly, so ``lm.generate``'s ``engine='auto'`` takes the ``hf`` engine for a model with adapters.

An adapter trained for a reward model only makes sense on the base it was trained on; ``base_fingerprint``
(a hash of the base weights) is stored beside it and checked when it is loaded onto another model.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gradascent.errors import CheckpointError, ConfigError
from gradascent.run.files import share_tensors

# The attention and MLP projections of Qwen2 / Llama style decoders.
DEFAULT_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_DIR = "lora"


def require_peft() -> Any:
    """The ``peft`` module, or a ConfigError naming the optional dependency."""
    try:
        import peft
    except ImportError:
        raise ConfigError("LoRA adapters need the optional dependency peft: pip install 'gradascent[lora]' "
                          "(or turn LoRA off)") from None
    return peft


@contextlib.contextmanager
def _peft_calls() -> Iterator[None]:
    """peft reads ``model.is_gradient_checkpointing``, which transformers 5 deprecates with a FutureWarning at
    every read: a warning about peft's code, not the user's, shown once for each adapter added or loaded."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def add_lora(
    model: nn.Module,
    name: str,
    r: int,
    alpha: float,
    dropout: float = 0.0,
    target_modules: Sequence[str] = DEFAULT_TARGETS,
    handle: Any = None,
) -> Any:
    """Add a trainable LoRA adapter ``name`` to ``model`` (in place) and make it the active one.

    Returns the peft handle used to switch adapters (pass it back as ``handle`` to add a second adapter).
    Only the new adapter's parameters require gradients afterwards.

    Raises:
        ConfigError: ``r`` not a positive int, ``alpha`` not > 0, ``dropout`` outside [0, 1), a target that
            names no module of the model, or a target on embeddings tied to the LM head (merging such an
            adapter into the head would change the input embedding too).
    """
    peft = require_peft()
    _check_lora_args(model if handle is None else handle.base_model.model, r, alpha, dropout, target_modules)
    lcfg = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                           bias="none")
    with _peft_calls():
        if handle is None:
            handle = peft.get_peft_model(model, lcfg, adapter_name=name)
        else:
            handle.add_adapter(name, lcfg)
    set_active(handle, name)
    return handle


def _check_lora_args(model: nn.Module, r: Any, alpha: Any, dropout: Any, targets: Sequence[str]) -> None:
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ConfigError(f"LoRA rank r must be an int >= 1, got {r!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0 or alpha == float("inf"):
        raise ConfigError(f"LoRA alpha must be a finite number > 0 (the update is scaled by alpha / r), got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"LoRA dropout must be in [0, 1), got {dropout!r}")
    if isinstance(targets, str) or not targets:
        raise ConfigError(f"target_modules must be a non-empty list of module names, got {targets!r}")
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]  # peft's matching
    if missing:
        raise ConfigError(f"LoRA target_modules {missing} name no module of this {type(model).__name__}")
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    on_tied = [t for t in targets if t in ("lm_head", "embed_tokens")]
    if tied and on_tied:
        raise ConfigError(f"LoRA on {on_tied}: this model ties its LM head to its input embedding, so an adapter "
                          "there cannot be merged without changing both; target the projections instead")


def set_active(handle: Any, name: str) -> None:
    """Make adapter ``name`` the one applied; only its parameters require gradients."""
    handle.set_adapter(name)
    for pname, p in handle.base_model.model.named_parameters():
        p.requires_grad_(f".{name}." in pname and "lora_" in pname)


@contextlib.contextmanager
def use_adapter(handle: Any, name: str | None) -> Iterator[None]:
    """Temporarily apply adapter ``name`` (None: the bare base weights), restoring the active adapter and
    every parameter's ``requires_grad`` afterwards. Meant for frozen roles under ``torch.no_grad``."""
    model = handle.base_model.model
    trainable = {n: p.requires_grad for n, p in model.named_parameters()}
    previous = handle.active_adapter
    try:
        if name is None:
            with handle.disable_adapter():
                yield
        else:
            handle.set_adapter(name)
            yield
    finally:
        if name is not None:
            handle.set_adapter(previous)
        for n, p in model.named_parameters():
            p.requires_grad_(trainable[n])


def base_fingerprint(model: nn.Module) -> str:
    """SHA-256 over the names and bytes of the base weights (LoRA parameters excluded), in name order."""
    h = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(state):
        if "lora_" in key:
            continue
        t = state[key].detach().cpu().contiguous()
        # peft renames wrapped layers' weights to ...base_layer.weight; hash the plain name so a model
        # with adapters and the same model without them agree.
        h.update(key.replace(".base_layer", "").encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_adapter(handle: Any, name: str, path: str | Path, fingerprint: str) -> Path:
    """Write adapter ``name`` to ``path/lora`` (peft's format) with the fingerprint of its base."""
    out = Path(path) / LORA_DIR
    handle.save_pretrained(str(out), selected_adapters=[name])
    share_tensors(out)  # safetensors wrote them 0600
    (out / "base.json").write_text(json.dumps({"adapter": name, "base_fingerprint": fingerprint}, indent=2) + "\n",
                                   encoding="utf-8")
    return out


def has_adapter(path: str | Path) -> bool:
    return (Path(path) / LORA_DIR / "base.json").is_file()


def load_adapter(handle: Any, path: str | Path, name: str, base: nn.Module) -> None:
    """Load the adapter saved under ``path/lora`` onto ``handle`` as ``name`` (frozen), after checking that it
    was trained on ``base``'s weights. The handle's active adapter is left as it was."""
    require_peft()
    src = Path(path) / LORA_DIR
    try:
        meta = json.loads((src / "base.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"no usable LoRA adapter in {src}: {exc}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("base_fingerprint"), str):
        raise CheckpointError(f"no usable LoRA adapter in {src}: base.json must be an object with the "
                              "'base_fingerprint' of the weights the adapter was trained on")
    if meta["base_fingerprint"] != base_fingerprint(base):
        raise ConfigError(f"the LoRA adapter in {src} was trained on other base weights than the policy's; "
                          "sharing base weights needs the reward model trained with LoRA on the same SFT model")
    saved = src / str(meta.get("adapter", name))
    if not (saved / "adapter_config.json").is_file():
        saved = src
    for needed in ("adapter_config.json", "adapter_model.safetensors"):
        if not (saved / needed).is_file():  # peft would look for it on the Hub instead
            raise CheckpointError(f"the LoRA adapter in {saved} is incomplete: {needed} is missing")
    previous = handle.active_adapter
    try:
        with _peft_calls():
            loaded = handle.load_adapter(str(saved), adapter_name=name, is_trainable=False)
    except Exception as exc:  # peft / safetensors / json raise their own types for a damaged adapter
        _drop(handle, name, previous)
        raise CheckpointError(f"the LoRA adapter in {saved} is corrupt: {type(exc).__name__}: {exc}") from None
    # peft only warns when the weights and the config's target_modules disagree, and leaves the layers it
    # found no weights for at their fresh initial values: an adapter that is not the one trained.
    unexpected = [k for k in loaded.unexpected_keys if "lora_" in k]
    missing = [k for k in loaded.missing_keys if "lora_" in k]
    if unexpected or missing:
        _drop(handle, name, previous)
        what = (f"{len(unexpected)} saved weights belong to no layer it adapts (first {unexpected[0]})" if unexpected
                else f"{len(missing)} weights of its layers are missing from adapter_model.safetensors "
                     f"(first {missing[0]})")
        raise CheckpointError(f"the LoRA adapter in {saved} does not match its adapter_config.json: {what}")
    set_active(handle, previous)


def _drop(handle: Any, name: str, previous: str) -> None:
    """Remove a half-loaded adapter ``name`` (if peft got as far as adding it) and reactivate ``previous``."""
    if name in getattr(handle, "peft_config", {}) and name != previous:
        handle.delete_adapter(name)
    set_active(handle, previous)


def merged_copy(handle: Any, name: str) -> nn.Module:
    """A plain ``transformers`` model with adapter ``name`` merged into a copy of the base weights; the
    handle and its model are left untouched."""
    clone = copy.deepcopy(handle)
    clone.set_adapter(name)
    return clone.merge_and_unload(adapter_names=[name])
