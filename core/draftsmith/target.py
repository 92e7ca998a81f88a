"""Target models: loading a local HF checkpoint and capturing the hidden states a method asks for.

Features are captured with forward hooks (never ``output_hidden_states``): a hook on decoder layer ``i`` stores
its raw output (pre-final-norm) as layer id ``i``; id ``-1`` hooks the embedding output; ``final_hidden``
hooks the final norm (post-norm, the ``lm_head`` input). The same capture serves training (whole sequences)
and decoding (only the new positions of a cached forward).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from .conventions import architectures_of, num_target_layers, read_config_json, text_config  # noqa: F401
from .conventions import output_logit_transform
from .conventions import validate_layer_ids as check_layer_ids
from .errors import ConfigError, DraftsmithError
from .method import TargetFeatures, TargetHeads, TargetRequest

# Attribute paths of the decoder-layer container and of the final norm in common HF layouts, tried in order.
LAYER_PATHS = ("model.layers", "model.model.layers", "model.language_model.layers",
               "model.model.language_model.layers", "transformer.h", "layers")
NORM_PATHS = ("model.norm", "model.model.norm", "model.language_model.norm", "model.model.language_model.norm",
              "transformer.ln_f", "norm")


def _get_path(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The ordered decoder layers of ``model`` (common layouts, then the plugins' ``find_decoder_layers``)."""
    for path in LAYER_PATHS:
        layers = _get_path(model, path)
        if isinstance(layers, (nn.ModuleList, list, tuple)) and len(layers) > 0:
            return list(layers)
        if isinstance(layers, nn.ModuleDict) and len(layers) > 0:
            return [layers[k] for k in sorted(layers.keys(), key=int)]
    from .plugins import get_plugin_manager

    found = get_plugin_manager().find_decoder_layers(model)
    if found:
        return list(found)
    raise DraftsmithError(
        f"cannot find the decoder layers of {type(model).__name__}: tried {', '.join(LAYER_PATHS)}. "
        f"A plugin can teach draftsmith this layout with the draftsmith_find_decoder_layers hook."
    )


def find_final_norm(model: nn.Module) -> nn.Module:
    for path in NORM_PATHS:
        norm = _get_path(model, path)
        if isinstance(norm, nn.Module):
            return norm
    raise DraftsmithError(f"cannot find the final norm of {type(model).__name__}: tried {', '.join(NORM_PATHS)}")


def validate_layer_ids(layer_ids: Sequence[int], num_layers: int) -> None:
    """Captured layer ids (may be empty: a method may want only ``final_hidden``); see
    :func:`draftsmith.conventions.validate_layer_ids`."""
    check_layer_ids(layer_ids, num_layers, allow_empty=True)


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


class FeatureCapture:
    """Forward hooks on a target that record what a :class:`TargetRequest` needs.

    Use as a context manager around target forward calls; ``features()`` returns what the last forward
    produced. Hooks are removed on exit.
    """

    def __init__(self, model: nn.Module, request: TargetRequest) -> None:
        self.model, self.request = model, request
        self._store: dict[Any, torch.Tensor] = {}
        self._handles: list[Any] = []
        layers = find_decoder_layers(model)
        validate_layer_ids(request.layer_ids, len(layers))
        self._modules: list[tuple[Any, nn.Module]] = []
        for i in request.layer_ids:
            self._modules.append((i, model.get_input_embeddings() if i == -1 else layers[i]))
        if request.final_hidden:
            self._modules.append(("final", find_final_norm(model)))

    def __enter__(self) -> "FeatureCapture":
        for key, module in self._modules:
            self._handles.append(module.register_forward_hook(self._hook(key)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, key: Any):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self._store[key] = _first(output).detach()

        return hook

    def features(self) -> TargetFeatures:
        missing = [k for k, _ in self._modules if k not in self._store]
        if missing:
            raise DraftsmithError(f"target forward did not reach hooked modules {missing}")
        return TargetFeatures(
            hidden_states={i: self._store[i] for i in self.request.layer_ids},
            final_hidden=self._store.get("final") if self.request.final_hidden else None,
        )


@contextlib.contextmanager
def capture(model: nn.Module, request: TargetRequest) -> Iterator[FeatureCapture]:
    with FeatureCapture(model, request) as cap:
        yield cap


@torch.no_grad()
def run_target(model: nn.Module, request: TargetRequest, input_ids: torch.Tensor,
               attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
               **kwargs: Any) -> tuple[TargetFeatures, Any]:
    """One target forward returning (captured features, model outputs)."""
    with capture(model, request) as cap:
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
    return cap.features(), out


def target_heads(model: nn.Module) -> TargetHeads:
    """The target's embedding and lm_head (frozen) with its vocab, special ids and post-lm_head logit transform."""
    config = text_config(model.config)
    lm_head = model.get_output_embeddings()
    if lm_head is None:
        raise DraftsmithError(f"{type(model).__name__} has no output embeddings (lm_head)")
    eos = getattr(model.config, "eos_token_id", None)
    gen = getattr(model, "generation_config", None)
    gen_eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    eos_ids: list[int] = []
    for e in (eos, gen_eos):
        if e is None:
            continue
        eos_ids.extend([e] if isinstance(e, int) else list(e))
    scale, softcap = output_logit_transform(config)  # Granite / Cohere logit scale, Gemma 2 soft-cap
    return TargetHeads(
        embed_tokens=model.get_input_embeddings(),
        lm_head=lm_head,
        vocab_size=int(config.vocab_size),
        pad_token_id=getattr(config, "pad_token_id", None),
        eos_token_ids=tuple(dict.fromkeys(eos_ids)),
        logit_scale=scale,
        logit_softcap=softcap,
    )


def check_target_dir(path: str | Path) -> Path:
    """Validate a local HF model directory with one-line errors."""
    path = Path(path)
    config = read_config_json(path, what="target path")
    architectures_of(config, path / "config.json")
    if not any(path.glob("*.safetensors")):
        if any(path.glob("*.bin")) or any(path.glob("*.pt")):
            raise ConfigError(f"target {str(path)!r} has only pickle weights (*.bin/*.pt); draftsmith loads "
                              f"safetensors only — convert the checkpoint first")
        raise ConfigError(f"target {str(path)!r} has no *.safetensors weights")
    return path


def sdpa_refused(exc: BaseException) -> bool:
    """Is ``exc`` transformers refusing SDPA for a model class (gpt-oss's sinks, Gemma 2's soft-capping)?"""
    return isinstance(exc, ValueError) and "scaled_dot_product_attention" in str(exc)


def load_target(path: str | Path, *, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu",
                trust_remote_code: bool = False, attn_implementation: str | None = "auto") -> nn.Module:
    """Load a frozen target (``eval()``, no grad) from a local directory; safetensors only.

    ``attn_implementation="auto"``: SDPA where transformers offers it for the family, else eager — transformers
    refuses SDPA for some families (gpt-oss's attention sinks, Gemma 2's soft-capping) rather than running them
    wrong. Any other value is passed to transformers as is."""
    from transformers import AutoModelForCausalLM

    path = check_target_dir(path)
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                 "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
                 "auto": "auto"}.get(dtype, dtype)
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "use_safetensors": True,
                              "local_files_only": True}
    if dtype is not None:
        kwargs["dtype"] = dtype
    auto = attn_implementation == "auto"
    if attn_implementation:
        kwargs["attn_implementation"] = "sdpa" if auto else attn_implementation
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
        except ValueError as exc:
            if not (auto and sdpa_refused(exc)):
                raise
            model = AutoModelForCausalLM.from_pretrained(str(path), **{**kwargs, "attn_implementation": "eager"})
    except (OSError, ValueError, KeyError) as exc:
        raise DraftsmithError(f"cannot load target {str(path)!r}: {str(exc).splitlines()[0]}") from exc
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


def load_target_heads(path: str | Path, *, dtype: torch.dtype | str | None = None, device: str | torch.device = "cpu",
                      trust_remote_code: bool = False) -> tuple[TargetHeads, nn.Module]:
    """The target's heads and final norm, for tools that never run the target (importing features an engine
    captured): ``(TargetHeads, final_norm)``.

    Loads the checkpoint with its config cut to one decoder layer, so a 70B target costs ~1/80 of its weights;
    embedding, norm and lm_head come from the checkpoint exactly as :func:`load_target` loads them (same
    classes, so Gemma's embedding scale and tied heads stay right). A family whose config refuses the cut (a
    per-layer list transformers checks against the layer count) is loaded whole instead."""
    from transformers import AutoConfig

    path = check_target_dir(path)
    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code, local_files_only=True)
        text = text_config(config)
        text.num_hidden_layers = 1
        if isinstance(getattr(text, "layer_types", None), list):  # validated against num_hidden_layers
            text.layer_types = text.layer_types[:1]
        model = _from_pretrained_quiet(path, config, dtype, trust_remote_code)
    except Exception:  # noqa: BLE001 - any refusal of the cut config: the whole target is always right
        model = load_target(path, dtype=dtype, device="cpu", trust_remote_code=trust_remote_code)
    model.to(device).eval().requires_grad_(False)
    return target_heads(model), find_final_norm(model)


def _from_pretrained_quiet(path: Path, config: Any, dtype: Any, trust_remote_code: bool) -> nn.Module:
    """``from_pretrained`` of a cut config, without transformers' report of the checkpoint's unused layers."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoModelForCausalLM.from_pretrained(str(path), config=config, dtype=dtype, use_safetensors=True,
                                                    local_files_only=True, trust_remote_code=trust_remote_code)
    finally:
        hf_logging.set_verbosity(level)


def load_tokenizer(path: str | Path, *, trust_remote_code: bool = False, chat_template: str | Path | None = None):
    """The target's tokenizer (local only); ``chat_template`` (a file path or a Jinja string) overrides."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"target {str(path)!r} has no usable tokenizer: {str(exc).splitlines()[0]}") from exc
    if chat_template is not None:
        from .data.chat import resolve_template

        tok.chat_template = resolve_template(tok, chat_template)  # a file, a Jinja string or a built-in name
    return tok
