"""DFlash export: the z-lab / vLLM (``dflash``) / SGLang checkpoint (peers-and-formats.md §2.4), and the vLLM
``speculators`` layout.

``save_pretrained`` already writes that layout, so exporting is saving plus checking what the engines parse:
``architectures == ["DFlashDraftModel"]``, ``model_type: qwen3``, ``block_size``, ``dflash_config
{mask_token_id, target_layer_ids}`` (output-of-layer ids, z-lab's and SGLang's convention; vLLM adds 1 itself),
``num_target_layers``, one ``layer_types`` entry per draft layer, and exactly the tensors ``layers.*``,
``fc.weight``, ``hidden_norm.weight``, ``norm.weight`` — no embedding, no lm_head (engines share the
target's). Written by :func:`draftsmith.checkpoint.save_draft`: non-finite weights are refused (an engine
would load them silently), the draft inside DDP/FSDP wrappers is saved. The ``native``, ``zlab`` and ``vllm``
formats are this layout; ``sglang`` refuses what SGLang would run with other in-block causality.

``speculators`` (:func:`export_speculators`) is what speculators 0.9.0's ``DFlashDraftModel.from_pretrained``
(``speculators/models/dflash/{config,core}.py``) loads without conversion and ``vllm serve DIR`` translates
(``vllm/transformers_utils/configs/speculators/algos.py: update_dflash``); readers.py reads both layouts back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from draftsmith.checkpoint import save_draft
from draftsmith.conventions import read_config_json
from draftsmith.errors import ConfigError, DraftsmithError
from draftsmith.formats import (check_whole_head_rotary, engine_layer_ids, sglang_dflash_causality_problem,
                                speculators_layer_fields, speculators_verifier)
from draftsmith.nn.weights import unwrap_model

from .config import NATIVE_ARCHITECTURE

REQUIRED_TOP_LEVEL = ("block_size", "dflash_config", "num_target_layers", "layer_types", "hidden_size",
                      "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                      "intermediate_size", "rms_norm_eps", "rope_parameters", "vocab_size")


def check_native_checkpoint(out_dir: str | Path) -> dict[str, Any]:
    """Validate an exported directory against what the DFlash engines read; returns its config dict."""
    from safetensors import safe_open

    out_dir = Path(out_dir)
    config = read_config_json(out_dir, what="DFlash checkpoint directory", error=DraftsmithError)
    problems = []
    if config.get("architectures") != [NATIVE_ARCHITECTURE]:
        problems.append(f"architectures is {config.get('architectures')}, expected [{NATIVE_ARCHITECTURE!r}]")
    if config.get("model_type") != "qwen3":
        problems.append(f"model_type is {config.get('model_type')!r}, expected 'qwen3'")
    problems += [f"config.json lacks {key!r}" for key in REQUIRED_TOP_LEVEL if key not in config]
    dflash = config.get("dflash_config") or {}
    problems += [f"dflash_config lacks {key!r}" for key in ("mask_token_id", "target_layer_ids") if key not in dflash]
    if len(config.get("layer_types") or []) != config.get("num_hidden_layers"):
        problems.append("layer_types must have one entry per draft layer")
    with safe_open(str(out_dir / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    depth = config.get("num_hidden_layers", 0)
    expected = {"fc.weight", "hidden_norm.weight", "norm.weight"}
    missing = sorted(n for n in expected if n not in names)
    stray = sorted(n for n in names - expected
                   if not (n.startswith("layers.") and int(n.split(".")[1]) < depth))
    if missing or stray:
        problems.append(f"tensor names: missing {missing}, unexpected {stray}")
    if problems:
        raise DraftsmithError(f"{out_dir} is not a valid DFlash checkpoint: " + "; ".join(problems))
    return config


def export_native(draft: Any, out_dir: str | Path, **options: Any) -> Path:
    """Write ``draft`` as a native DFlash checkpoint (``config.json`` + ``model.safetensors``) in ``out_dir``."""
    if options:
        raise DraftsmithError(f"export_native takes no options, got {sorted(options)}")
    draft = unwrap_model(draft)
    if getattr(draft.config, "dflash_config", None) is None:
        raise DraftsmithError(f"{type(draft).__name__} is not a DFlash draft (its config has no dflash_config)")
    out_dir = save_draft(draft, out_dir, architectures=[NATIVE_ARCHITECTURE])  # non-finite weights refused
    check_native_checkpoint(out_dir)
    return out_dir


def export_zlab(draft: Any, out_dir: str | Path, **options: Any) -> Path:
    """The native layout for z-lab's ``DFlashDraftModel``, refusing a partial-rotary draft: z-lab 0.1.0 builds
    its rotary over the whole head (measured: block hidden states off by 7e-2 on a Qwen3.5 target)."""
    check_whole_head_rotary(unwrap_model(draft).config, "zlab", "z-lab dflash 0.1.0")
    return export_native(draft, out_dir, **options)


def export_sglang(draft: Any, out_dir: str | Path, **options: Any) -> Path:
    """The z-lab layout SGLang reads, refusing drafts whose attention SGLang would change (see
    :func:`draftsmith.formats.sglang_dflash_causality_problem`) or whose partial rotary its Qwen3-style layers
    would spread over the whole head (as z-lab and SpecForge do)."""
    config = unwrap_model(draft).config
    problem = sglang_dflash_causality_problem(bool(getattr(config, "causal", False)), config.layer_types or [])
    if problem:
        raise ConfigError(f"the 'sglang' format cannot hold {problem}")
    check_whole_head_rotary(config, "sglang", "SpecForge 0.2.0, SGLang")
    return export_native(draft, out_dir, **options)


# -- speculators -------------------------------------------------------------------------------------------------
SPECULATORS_ARCHITECTURE = NATIVE_ARCHITECTURE  # what speculators' own save_pretrained writes (the class name)
SPECULATORS_VERSION = "0.9.0"


def export_speculators(draft: Any, out_dir: str | Path, *, target: str | None = None, **options: Any) -> Path:
    """Write ``draft`` in the speculators 0.9.0 DFlash layout; ``target``: the verifier's directory or hub id
    (default: where the draft's target was loaded from, the block's ``target_name_or_path``).

    Rules (``speculators/models/dflash/{config,core}.py``; vLLM: ``configs/speculators/algos.py: update_dflash``):

    * ``speculators_model_type: dflash``; the draft layer's Qwen3 config in ``transformer_layer_config``
      (``num_hidden_layers`` = the draft depth); ``block_size``, ``mask_token_id``, ``draft_vocab_size`` (= the
      target vocab: speculators' ``lm_head`` is then the verifier's), ``sample_from_anchor: false`` (DFlash: the
      anchor is the bonus token, slots 1.. predict);
    * ids ``in(k)`` (+1) in ``aux_hidden_state_layer_ids`` (:func:`draftsmith.formats.engine_layer_ids`, which
      refuses the last layer); vLLM sets ``dflash_config.target_layer_ids`` = aux − 1 = ours;
    * causality: speculators runs full-attention layers bidirectionally whatever the flags; vLLM sets
      ``dflash_config.causal = not sliding_window_non_causal`` (absent → true → bidirectional), so
      ``sliding_window_non_causal: true`` is written — an explicit ``false`` would make vLLM run the blocks
      causally. A causal draft, and a sliding-window draft (speculators windows the context by anchor,
      ``kv >= anchor − W``, we and vLLM by query, ``pos − kv < W``), are refused;
    * tensors: ``layers.*``, ``fc``, ``hidden_norm``, ``norm`` only. ``embed_tokens``, ``lm_head``,
      ``verifier_norm`` are the verifier's: speculators' loader reads them from the verifier directory
      (``load_verifier_weights``, overwriting any saved copy), so nothing of the target is written and the
      verifier must be reachable where it is named; no ``d2t``/``t2d`` (full vocabulary: none exist).
    """
    if options:
        raise ConfigError(f"speculators export takes only the option 'target', got {sorted(options)}")
    model = _require_dflash(draft)
    cfg = model.config
    _refuse_for_speculators(cfg)
    block = dict(getattr(cfg, "draftsmith", None) or {})
    n_target = block.get("target_num_hidden_layers") or cfg.num_target_layers
    aux = engine_layer_ids(cfg.target_layer_ids, n_target, "speculators")
    verifier = speculators_verifier(target, block)  # its loader reads the verifier's embedding, lm_head, norm
    text = {
        "architectures": [SPECULATORS_ARCHITECTURE], "speculators_model_type": "dflash",
        "speculators_version": SPECULATORS_VERSION, "transformer_layer_config": _layer_config(cfg),
        "draft_vocab_size": cfg.vocab_size, "target_hidden_size": cfg.hidden_size, "block_size": cfg.block_size,
        "aux_hidden_state_layer_ids": aux, "mask_token_id": cfg.mask_token_id,
        "sliding_window_non_causal": True, "sample_from_anchor": False,
        "speculators_config": {
            "algorithm": "dflash", "default_proposal_method": "greedy",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": cfg.block_size - 1}],
            "verifier": verifier,
        },
        "torch_dtype": str(model.dtype).split(".")[-1],
        "draftsmith_export": {**block, "exported_for": "speculators", "engine_layer_ids": aux,
                              "engine_layer_id_convention": "input-of-layer", "target_num_hidden_layers": n_target},
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(text, indent=2, sort_keys=True) + "\n")
    _save_body(model, out)
    return out


def _refuse_for_speculators(cfg: Any) -> None:
    """One line for each draft speculators' DFlashDraftModel would run differently."""
    if cfg.draft_sliding_window is not None:
        raise ConfigError("the 'speculators' format cannot hold a sliding-window DFlash draft: speculators "
                          "(models/dflash/attention.py) windows the context by anchor (kv >= anchor - W), draftsmith, "
                          "z-lab and vLLM by query (pos - kv < W); use --format vllm or zlab")
    if cfg.causal:
        raise ConfigError("the 'speculators' format cannot hold a causal DFlash draft: speculators runs "
                          "full-attention blocks bidirectionally whatever its flags; use --format vllm or zlab")
    check_whole_head_rotary(cfg, "speculators", "speculators 0.9.0")
    if getattr(cfg, "mlp_bias", False):
        raise ConfigError("the 'speculators' format cannot hold MLP biases (its Qwen3MLP has none); "
                          "use --format vllm or zlab")


def _layer_config(cfg: Any) -> dict[str, Any]:
    """The draft layer's Qwen3 config as speculators builds it (``validate_transformer_config``: a dict →
    ``Qwen3Config``); ``num_hidden_layers`` is the draft depth."""
    return {**speculators_layer_fields(cfg), "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
            "layer_types": ["full_attention"] * cfg.num_hidden_layers, "use_sliding_window": False,
            "sliding_window": None, "max_window_layers": cfg.num_hidden_layers}


def _save_body(model: Any, out: Path) -> None:
    """``model.safetensors`` with the draft body only (``layers.*``, ``fc``, ``hidden_norm``, ``norm``; the
    names speculators' DFlashDraftModel uses); non-finite weights refused."""
    from safetensors.torch import save_file

    from draftsmith.nn.weights import non_finite_tensors

    state = model.state_dict()
    bad = non_finite_tensors(state)
    if bad:  # an engine would load NaN/inf weights silently
        raise DraftsmithError(f"refusing to export non-finite weights: {bad[:5]}")
    save_file({n: t.detach().to("cpu").contiguous() for n, t in state.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})


def _require_dflash(draft: Any) -> Any:
    model = unwrap_model(draft)
    if getattr(model.config, "dflash_config", None) is None:
        raise DraftsmithError(f"{type(model).__name__} is not a DFlash draft (its config has no dflash_config)")
    return model
