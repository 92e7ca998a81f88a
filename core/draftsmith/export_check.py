"""``draftsmith check-export``: does an exported draft directory say, to the engine that will read it, what we mean?

:func:`check_export` detects the layout (:func:`detect_layout`) and returns one line per problem:

* the keys the engine reads are present (a missing id key makes vLLM fall back to (2, N//2, N−3) silently) and
  no key is written that the engine reads with another meaning (SpecForge's ``norm_output``);
* the captured layer ids, translated from the engine's convention (:mod:`draftsmith.formats`), are capturable on
  the target (``--target``): inside ``[-1, N−2]`` in output-of-layer terms;
* the vocabulary maps are consistent (``d2t`` offsets land on the ``t2d`` rows, sizes match the config) and
  present or absent as the engine requires;
* the DFlash mask token is a reserved id of the target's vocab (not pad/eos);
* no tensor is non-finite, none is left all-constant (never trained or never copied), and with ``--target`` the
  token embedding is the target's (an EAGLE head serves with the embedding it was trained with; a random one,
  TorchSpec#38, serves garbage).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .conventions import read_config_json
from .errors import DraftsmithError
from .formats import FORMATS, INPUT_OF_LAYER, sglang_dflash_causality_problem, uncapturable_ids

# engine (``--engine``) -> the layouts it reads
ENGINE_LAYOUTS = {"vllm": {"eagle3-vllm", "eagle3-speculators", "dflash"}, "sglang": {"eagle3-sglang", "dflash"},
                  "specforge": {"eagle3-sglang", "dflash"}, "speculators": {"eagle3-speculators"},
                  "zlab": {"dflash"}}


def detect_layout(config: dict[str, Any]) -> str | None:
    """``eagle3-speculators`` / ``eagle3-vllm`` / ``eagle3-sglang`` / ``dflash`` / ``dspark`` / ``eagle1``, or None
    for a layout check-export does not know (e.g. a third-party format)."""
    archs = config.get("architectures") or []
    if config.get("speculators_model_type") == "eagle3":
        return "eagle3-speculators"
    if "Eagle3LlamaForCausalLM" in archs:
        return "eagle3-vllm"
    if "LlamaForCausalLMEagle3" in archs:
        return "eagle3-sglang"
    if "DFlashDraftModel" in archs:
        return "dflash"
    if "Qwen3DSparkModel" in archs:
        return "dspark"
    if "LlamaEagleDraftModel" in archs:
        return "eagle1"
    return None


def _ids(config: dict[str, Any], layout: str) -> tuple[list[int] | None, str]:
    """The captured ids the engine reads, in draftsmith's output-of-layer convention, and where they were."""
    if layout == "eagle3-speculators" or layout == "eagle3-vllm":
        ids = config.get("eagle_aux_hidden_state_layer_ids")
        fmt = "speculators" if layout == "eagle3-speculators" else "vllm"
        shift = 1 if FORMATS[fmt].layer_id_convention == INPUT_OF_LAYER else 0
        return (None if ids is None else [int(i) - shift for i in ids]), "eagle_aux_hidden_state_layer_ids"
    if layout == "eagle3-sglang":
        ids = (config.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
        return ids, "eagle_config.eagle_aux_hidden_state_layer_ids"
    if layout == "dflash":
        return (config.get("dflash_config") or {}).get("target_layer_ids"), "dflash_config.target_layer_ids"
    return config.get("target_layer_ids"), "target_layer_ids"


def _tensor_problems(state: dict[str, Any]) -> list[str]:
    import torch

    problems = []
    for name, t in state.items():
        if not t.is_floating_point():
            continue
        if not bool(torch.isfinite(t).all()):
            problems.append(f"tensor {name} holds NaN/inf values")
        elif t.dim() == 2 and t.numel() > 1 and bool((t == t.flatten()[0]).all()):
            problems.append(f"tensor {name} is constant ({float(t.flatten()[0])}): never trained or never copied")
    return problems


def _vocab_problems(config: dict[str, Any], state: dict[str, Any], layout: str) -> list[str]:
    import torch

    layer = config.get("transformer_layer_config") or {}
    vocab = int(config.get("vocab_size") or layer.get("vocab_size") or 0)
    draft_vocab = int(config.get("draft_vocab_size") or vocab)
    d2t, t2d = state.get("d2t"), state.get("t2d")
    problems = []
    if (d2t is None) != (t2d is None):
        problems.append("only one of d2t / t2d is present")
    if d2t is None:
        if draft_vocab < vocab:
            problems.append(f"draft_vocab_size {draft_vocab} < vocab {vocab} but no d2t/t2d vocabulary maps")
        if layout == "eagle3-sglang":
            problems.append("no d2t/t2d: SpecForge leaves them uninitialised (write identity maps)")
        return problems
    if layout == "eagle3-speculators" and draft_vocab == vocab:
        problems.append("d2t/t2d on a full-vocabulary head: speculators rejects them")
    if d2t.numel() != draft_vocab or t2d.numel() != vocab:
        problems.append(f"d2t has {d2t.numel()} entries (draft vocab {draft_vocab}), t2d {t2d.numel()} (vocab {vocab})")
        return problems
    targets = torch.arange(draft_vocab) + d2t.long()
    if bool((targets < 0).any() or (targets >= vocab).any()):
        problems.append("d2t maps draft ids outside the target vocab")
    elif not bool(t2d.bool()[targets].all()) or int(t2d.bool().sum()) != draft_vocab:
        problems.append("d2t and t2d disagree (a draft id maps to a target id t2d does not mark)")
    return problems


def _layout_problems(config: dict[str, Any], names: set[str], layout: str, engine: str | None) -> list[str]:
    problems = []
    if layout == "eagle3-sglang":
        if config.get("norm_output") is False:
            problems.append("norm_output: false — SpecForge reads it as 'skip the final norm before lm_head'")
        if any(n.startswith(("additional_layers.", "layers.")) for n in names):
            problems.append("extra draft layers: SGLang and SpecForge load only midlayer.* and skip the rest")
    if layout in ("eagle3-vllm", "eagle3-speculators"):
        if any(n.startswith(("midlayer.", "additional_layers.")) for n in names):
            problems.append("tensors named midlayer.*/additional_layers.*: this engine reads layers.{i}.*")
        if "norm_before_residual" not in config:
            problems.append("norm_before_residual is absent: vLLM's speculators path defaults it to true")
    if layout == "eagle3-speculators":
        verifier = (config.get("speculators_config") or {}).get("verifier") or {}
        if not verifier.get("name_or_path"):
            problems.append("speculators_config.verifier.name_or_path is empty: speculators' loader needs it")
        if "transformer_layer_config" not in config:
            problems.append("transformer_layer_config is missing")
    if layout == "dflash":
        dflash = config.get("dflash_config") or {}
        for key in ("mask_token_id", "target_layer_ids", "block_size"):
            if key not in dflash and not (key == "block_size" and "block_size" in config):
                problems.append(f"dflash_config.{key} is missing")
        if len(config.get("layer_types") or []) != config.get("num_hidden_layers"):
            problems.append("layer_types must have one entry per draft layer (SGLang reads causality from it)")
        if any(n.startswith(("embed_tokens.", "lm_head.")) for n in names):
            problems.append("embed_tokens/lm_head tensors: DFlash engines use the target's and reject them")
        causality = sglang_dflash_causality_problem(bool(dflash.get("causal", config.get("is_causal", False))),
                                                    config.get("layer_types") or [])
        if engine in ("sglang", "specforge") and causality:
            problems.append(causality)
    return problems


def _target_problems(config: dict[str, Any], state: dict[str, Any], layout: str, ids: list[int] | None,
                     target: str) -> list[str]:
    import torch

    from .conventions import num_target_layers, text_config

    try:
        from transformers import AutoConfig

        target_config = AutoConfig.from_pretrained(target)
    except (OSError, ValueError) as exc:
        raise DraftsmithError(f"cannot read the target config at {target!r}: {str(exc).splitlines()[0]}") from None
    problems = []
    n = num_target_layers(target_config)
    if ids is not None:
        bad = uncapturable_ids(ids, n)
        if bad:
            problems.append(f"layer ids {bad} (output-of-layer) cannot be captured on this {n}-layer target: "
                            f"engines capture out(-1)..out({n - 2}) only")
    text = text_config(target_config)
    if layout == "dflash":
        from .conventions import validate_mask_token_for

        try:
            validate_mask_token_for((config.get("dflash_config") or {}).get("mask_token_id"), target_config)
        except DraftsmithError as exc:
            problems.append(str(exc))
    embed = state.get("embed_tokens.weight")
    if embed is not None:
        from safetensors import safe_open

        files = sorted(Path(target).glob("*.safetensors")) if Path(target).is_dir() else []
        reference = None
        for file in files:
            with safe_open(str(file), "pt") as f:
                for key in f.keys():
                    if key.endswith("embed_tokens.weight"):
                        reference = f.get_tensor(key)
        if reference is not None and reference.shape == embed.shape:
            cos = torch.nn.functional.cosine_similarity(reference.flatten().float(), embed.flatten().float(), dim=0)
            if float(cos) < 0.5:
                problems.append(f"embed_tokens is not the target's embedding (cosine {float(cos):.2f}): "
                                f"never copied from the target?")
        elif reference is not None or int(embed.shape[0]) != int(text.vocab_size):
            problems.append(f"embed_tokens has shape {tuple(embed.shape)}, the target's vocab is {text.vocab_size}")
    return problems


def check_export(path: str | Path, engine: str | None = None, target: str | None = None) -> tuple[str, list[str]]:
    """``(layout, problems)`` of an exported draft directory (see module docstring)."""
    from safetensors.torch import load_file

    path = Path(path)
    config = read_config_json(path, what="export directory", error=DraftsmithError)
    weights = path / "model.safetensors"
    if not weights.is_file():
        raise DraftsmithError(f"{str(path)!r} has no model.safetensors")
    layout = detect_layout(config)
    if layout is None:
        raise DraftsmithError(f"unrecognised draft layout (architectures {config.get('architectures')}); "
                              f"check-export knows EAGLE-3 (native/sglang, vllm, speculators), DFlash, DSpark and "
                              f"EAGLE-1 drafts")
    state = load_file(str(weights))
    problems = []
    if engine is not None:
        if engine not in ENGINE_LAYOUTS:
            raise DraftsmithError(f"unknown engine {engine!r}; known: {sorted(ENGINE_LAYOUTS)}")
        if layout not in ENGINE_LAYOUTS[engine]:
            problems.append(f"{engine} does not read the {layout} layout (it reads {sorted(ENGINE_LAYOUTS[engine])})")
    ids, where = _ids(config, layout)
    if ids is None and layout != "eagle1":
        problems.append(f"{where} is missing: the engine would capture its default layers silently")
    problems += _layout_problems(config, set(state), layout, engine)
    if layout.startswith("eagle3"):
        problems += _vocab_problems(config, state, layout)
    problems += _tensor_problems(state)
    if target is not None:
        problems += _target_problems(config, state, layout, ids, target)
    return layout, problems
