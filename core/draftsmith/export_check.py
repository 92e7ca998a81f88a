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
ENGINE_LAYOUTS = {"vllm": {"eagle3-vllm", "eagle3-speculators", "dflash", "dflash-speculators", "dspark",
                           "dspark-speculators"},
                  "sglang": {"eagle3-sglang", "dflash", "dspark-sglang"},
                  "specforge": {"eagle3-sglang", "dflash", "dspark-sglang"},
                  "speculators": {"eagle3-speculators", "dflash-speculators", "dspark-speculators"},
                  "zlab": {"dflash"}}
# export --format F checks its directory as read by this engine (None: no engine-specific rule)
FORMAT_ENGINE = {"vllm": "vllm", "sglang": "sglang", "speculators": "speculators", "zlab": "zlab"}


def detect_layout(config: dict[str, Any]) -> str | None:
    """``eagle3-speculators`` / ``eagle3-vllm`` / ``eagle3-sglang`` / ``dflash`` / ``dflash-speculators`` /
    ``dspark`` (vLLM's and the native ``Qwen3DSparkModel``) / ``dspark-sglang`` / ``dspark-speculators`` /
    ``eagle1``, or None for a layout check-export does not know (e.g. a third-party format)."""
    archs = config.get("architectures") or []
    kind = config.get("speculators_model_type")
    if kind in ("eagle3", "dflash", "dspark"):
        return f"{kind}-speculators"
    if "DSparkDraftModel" in archs:
        return "dspark-sglang"
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
    if layout in ("dflash-speculators", "dspark-speculators"):  # speculators: in(k)
        ids = config.get("aux_hidden_state_layer_ids")
        return (None if ids is None else [int(i) - 1 for i in ids]), "aux_hidden_state_layer_ids"
    if layout == "dspark-sglang":
        return (config.get("dflash_config") or {}).get("target_layer_ids"), "dflash_config.target_layer_ids"
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
    if layout.endswith("-speculators") and draft_vocab == vocab:
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
    if layout.endswith("-speculators"):
        verifier = (config.get("speculators_config") or {}).get("verifier") or {}
        if not verifier.get("name_or_path"):
            problems.append("speculators_config.verifier.name_or_path is empty: speculators' loader needs it")
        if "transformer_layer_config" not in config:
            problems.append("transformer_layer_config is missing")
    problems += _block_layout_problems(config, names, layout, engine)
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


def _block_layout_problems(config: dict[str, Any], names: set[str], layout: str, engine: str | None) -> list[str]:
    """DFlash / DSpark rules beyond the z-lab layout: the block convention flag (``sample_from_anchor``: true for
    DSpark, false for DFlash — a DSpark draft served without it accepts < 1 %, vllm#56792), the mask token, the
    head types vLLM serves, the SGLang ``dspark_config`` block."""
    problems = []
    wants_anchor = {"dflash-speculators": False, "dspark-speculators": True}.get(layout)
    if layout == "dspark" and engine == "vllm":
        wants_anchor = True
        if "dspark_bonus_anchor" not in config:
            problems.append("dspark_bonus_anchor is missing: vLLM reads the block convention from it")
    if wants_anchor is not None and config.get("sample_from_anchor") is not wants_anchor:
        problems.append(f"sample_from_anchor is {config.get('sample_from_anchor')!r}, expected {wants_anchor} "
                        f"for {'DSpark' if wants_anchor else 'DFlash'} (the block convention; a wrong or missing "
                        f"flag serves at acceptance ~1 with no error)")
    if layout in ("dspark", "dspark-speculators") and engine == "vllm":  # speculators itself trains gated heads
        if int(config.get("markov_rank") or 0) > 0 and config.get("markov_head_type", "vanilla") != "vanilla":
            problems.append(f"markov_head_type {config.get('markov_head_type')!r}: vLLM serves only 'vanilla'")
    if layout == "dflash-speculators" and engine in (None, "vllm"):
        layer_types = (config.get("transformer_layer_config") or {}).get("layer_types") or []
        if config.get("sliding_window_non_causal", False) is False and "sliding_attention" not in layer_types:
            problems.append("sliding_window_non_causal is false or absent: vLLM then sets dflash_config.causal and "
                            "runs the blocks causally, while speculators trains full-attention blocks "
                            "bidirectionally")
    if layout.endswith("-speculators") and layout != "eagle3-speculators" and config.get("mask_token_id") is None:
        problems.append("mask_token_id is missing")
    if layout == "dspark" and engine == "vllm":
        ids = config.get("target_layer_ids")
        earlier = {"eagle_aux_hidden_state_layer_ids": config.get("eagle_aux_hidden_state_layer_ids"),
                   "dflash_config.target_layer_ids": (config.get("dflash_config") or {}).get("target_layer_ids"),
                   "dspark_target_layer_ids": config.get("dspark_target_layer_ids")}
        for key, value in earlier.items():  # vLLM reads these before target_layer_ids
            if value is not None and list(value) != [int(i) + (key == "eagle_aux_hidden_state_layer_ids")
                                                       for i in ids or []]:
                problems.append(f"{key} is set and differs from target_layer_ids: vLLM reads it first")
        if not {"embed_tokens.weight", "lm_head.weight"} <= names:
            problems.append("embed_tokens/lm_head missing: vLLM's DSpark loader reads the draft's own copies")
    if layout == "dspark-sglang":
        for key in ("dflash_config", "dspark_config"):
            if not isinstance(config.get(key), dict):
                problems.append(f"{key} is missing: SGLang reads the DSpark layout from it")
        dflash = config.get("dflash_config") or {}
        if dflash.get("mask_token_id") is None:
            problems.append("dflash_config.mask_token_id is missing")
        if dflash and dflash.get("projector_type") != "dspark":
            problems.append(f"dflash_config.projector_type is {dflash.get('projector_type')!r}: SpecForge builds a "
                            f"DFlash projector unless it is 'dspark'")
    if layout in ("dspark-sglang", "dspark-speculators", "dflash-speculators") and \
            int(config.get("draft_vocab_size") or 0) in (0, int(config.get("vocab_size") or
                                                            (config.get("transformer_layer_config") or {})
                                                            .get("vocab_size") or 0)) and \
            any(n.startswith(("embed_tokens.", "lm_head.")) for n in names):
        problems.append("embed_tokens/lm_head tensors on a full-vocabulary draft: this client takes the target's")
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
    if layout.startswith(("dflash", "dspark")):
        from .conventions import validate_mask_token_for

        mask = (config.get("dflash_config") or {}).get("mask_token_id", config.get("mask_token_id"))
        try:
            validate_mask_token_for(mask, target_config)
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
    if layout.startswith("eagle3") or layout.endswith("-speculators"):
        problems += _vocab_problems(config, state, layout)
    problems += _tensor_problems(state)
    if target is not None:
        problems += _target_problems(config, state, layout, ids, target)
    return layout, problems
