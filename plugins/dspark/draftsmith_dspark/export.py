"""The native DSpark checkpoint (NeMo AutoModel / DeepSpec layout): ``config.json`` + ``model.safetensors``.

``config.json`` carries ``architectures: ["Qwen3DSparkModel"]``, the Qwen3 layer dims, ``block_size``,
``mask_token_id``, ``target_layer_ids`` (output-of-layer ids), ``num_target_layers``, ``markov_rank``,
``markov_head_type``, ``enable_confidence_head``, ``confidence_head_with_markov`` and the ``draftsmith`` block;
the weights include the frozen full-vocab ``embed_tokens`` / ``lm_head`` copies, as DSpark checkpoints do.

Engine formats (``draftsmith export --format F``; readers in readers.py, docs/formats.md): ``vllm``
(``Qwen3DSparkModel`` + the keys vLLM's DSpark speculator reads), ``sglang`` (SGLang / SpecForge
``DSparkDraftModel`` with ``dflash_config`` + ``dspark_config``), ``speculators`` (speculators 0.9.0 ``dspark``).
Each refuses, in one line naming a format that can, a draft its client would run differently; ids go through
:func:`draftsmith.formats.engine_layer_ids` (the last target layer, which no engine captures, is refused). The
``draftsmith`` block moves to ``draftsmith_export`` so ``draftsmith.load_draft`` reads them with their reader.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from draftsmith.checkpoint import save_draft
from draftsmith.errors import ConfigError, DraftsmithError
from draftsmith.formats import (FORMATS, check_whole_head_rotary, engine_layer_ids, sglang_dflash_causality_problem,
                                speculators_verifier)
from draftsmith.nn.weights import non_finite_tensors, unwrap_model

REQUIRED_CONFIG_KEYS = ("architectures", "block_size", "mask_token_id", "target_layer_ids", "num_target_layers",
                        "markov_rank", "markov_head_type", "enable_confidence_head", "confidence_head_with_markov",
                        "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                        "vocab_size", "draftsmith")


def export_native(draft: Any, out_dir: str | Path, *, dtype: Any = None, **options: Any) -> Path:
    """Write ``draft`` to ``out_dir`` as config.json + model.safetensors through
    :func:`draftsmith.checkpoint.save_draft` (optionally a copy cast to ``dtype``, e.g. ``"bfloat16"``; non-finite
    weights refused; rotary frequencies are not saved). ``out_dir`` must be empty or new. Returns the directory."""
    if options:
        raise DraftsmithError(f"unknown native-export option(s) {sorted(options)}; known: dtype")
    config = getattr(draft, "config", None)
    if config is None or getattr(config, "draftsmith", None) is None or config.mask_token_id is None:
        raise DraftsmithError("export_native expects a DSpark draft built by Qwen3DSparkModel.build_draft_config")
    out = Path(out_dir)
    if out.exists():
        present = sorted(p.name for p in out.iterdir()) if out.is_dir() else [out.name]
        if present:  # never mix with (or silently replace) another checkpoint
            raise DraftsmithError(f"export directory {str(out)!r} is not empty ({', '.join(present)})")
    save_draft(draft, out, dtype=dtype)
    written = json.loads((out / "config.json").read_text())
    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in written]
    if missing or not (out / "model.safetensors").is_file():
        raise DraftsmithError(f"native export incomplete: missing config keys {missing} or model.safetensors")
    return out


# -- engine formats ----------------------------------------------------------------------------------------------
VLLM_ARCHITECTURE = "Qwen3DSparkModel"  # vLLM's DSpark draft class (registry name)
SGLANG_ARCHITECTURE = "DSparkDraftModel"  # SpecForge's DRAFT_REGISTRY key (modeling/draft/dspark.py:282)
SPECULATORS_ARCHITECTURE = "DSparkDraftModel"  # what speculators 0.9.0's save_pretrained writes
SPECULATORS_VERSION = "0.9.0"
# ``draftsmith_export`` keys that describe the export itself (readers drop them to rebuild our block)
EXPORT_ONLY_KEYS = ("format", "exported_for", "engine_layer_ids", "engine_layer_id_convention", "num_anchors",
                    "freeze_embeddings")


def export_vllm(draft: Any, out_dir: str | Path, *, target: Any = None, **options: Any) -> Path:
    """DSpark for vLLM (``Qwen3DSparkModel``; rules from engines-2026.md §DSpark and vLLM's DSpark speculator).

    * ``architectures: ["Qwen3DSparkModel"]``; the Qwen3 layer dims and the DSpark fields vLLM reads:
      ``block_size``, ``mask_token_id``, ``markov_rank``, ``markov_head_type``, ``enable_confidence_head``,
      ``confidence_head_with_markov``, ``num_target_layers``;
    * ``target_layer_ids`` flat, in **our out(k) ids as is**: vLLM reads that key +1 (engines-2026.md §EAGLE-3:
      its capture looks up ``eagle_aux_hidden_state_layer_ids``, ``dflash_config.target_layer_ids``,
      ``dspark_target_layer_ids``, then ``target_layer_ids``, the last three +1), so no other id key is written;
    * ``sample_from_anchor: true`` and ``dspark_bonus_anchor: false``: vLLM's DSpark speculator sets
      ``sample_from_anchor = not dspark_bonus_anchor`` (``v1/worker/gpu/spec_decode/dspark/speculator.py``); true
      would run the DFlash 1+N block and serve at < 1 % acceptance (vllm#56792);
    * only the ``vanilla`` Markov head is served (the sampler adds ``markov_bias(markov_embed(prev))``): other
      heads are refused; no ``d2t``/``t2d`` (full vocabulary); weights as native (incl. ``embed_tokens`` /
      ``lm_head``). Serve with ``num_speculative_tokens`` >= ``block_size`` (vllm#50012).

    ``target`` is accepted for the CLI's sake and not recorded (vLLM takes the verifier from its command line).
    """
    del target
    _no_options("vllm", options)
    model = _require_dspark(draft, "vllm")
    cfg = model.config
    if cfg.markov_rank > 0 and cfg.markov_head_type != "vanilla":
        raise ConfigError(f"the 'vllm' format serves only the vanilla Markov head (vLLM's DSpark sampler adds "
                          f"markov_w2·markov_w1[prev]); this draft's is {cfg.markov_head_type!r}: use --format "
                          f"sglang or speculators")
    ids = engine_layer_ids(cfg.target_layer_ids, _target_layers(model), "vllm")  # in(k): what vLLM captures
    text = json.loads(cfg.to_json_string(use_diff=False))
    for key in ("draftsmith", "eagle_aux_hidden_state_layer_ids", "dflash_config", "dspark_target_layer_ids",
                "eagle_config", "transformers_version"):
        text.pop(key, None)
    text.update(architectures=[VLLM_ARCHITECTURE], target_layer_ids=list(cfg.target_layer_ids),
                sample_from_anchor=True, dspark_bonus_anchor=False, **_dspark_fields(cfg),
                draftsmith_export=_export_block(model, "vllm", ids), dtype=_dtype_name(model))
    out = _write_config(out_dir, text)
    _save_weights(model, out)
    return out


def export_sglang(draft: Any, out_dir: str | Path, *, target: Any = None, **options: Any) -> Path:
    """DSpark in the SGLang / SpecForge layout (``DSparkDraftModel``).

    * SpecForge 0.2.0 (``modeling/draft/dflash.py`` ``DFlashDraftModel.__init__``, ``dspark.py``
      ``DSparkDraftModel`` / ``build_markov_head`` / ``_init_draft_head``) reads a Qwen3 config with top-level
      ``block_size`` and ``layer_types`` and a ``dflash_config`` holding ``target_layer_ids`` (out(k): its
      ``extract_context_feature`` indexes ``hidden_states[id + 1]``), ``mask_token_id``, ``projector_type:
      "dspark"``, ``attention_mode`` (``gqa`` needs fewer KV heads, ``mha`` equal ones), ``markov_rank``,
      ``markov_head_type``, ``enable_confidence_head`` (default: ``confidence_head_alpha > 0``) and
      ``confidence_head_with_markov`` (default **false**, ours true): all written explicitly. Without them it
      falls back to its own default ids and no heads (our native export: ``fc.weight`` 768 vs 512 wide and 6
      unexpected tensors);
    * SGLang (``srt/speculative/dspark_utils.py`` ``parse_dspark_draft_config``) reads ``dspark_config`` first
      (``target_layer_ids`` out(k), shifted +1 internally as for DFlash, speculators#753; ``markov_rank``,
      ``markov_head_type`` — vanilla, gated and rnn are served —, ``mask_token_id``) and the block size of the
      DFlash config; γ = block_size draft positions (sample-from-anchor); in-block causality from
      ``layer_types`` (full attention = bidirectional, what DSpark trains);
    * tensors ``layers.*``, ``fc``, ``hidden_norm``, ``norm``, ``markov_head.*``, ``confidence_head.proj.*``;
      no ``embed_tokens`` / ``lm_head`` (both clients use the target's) and no ``d2t``/``t2d`` (SpecForge's
      DSpark has no vocabulary maps).

    Refused: what these Qwen3 layers cannot hold (an MLP bias, a partial rotary).
    """
    del target
    _no_options("sglang", options)
    model = _require_dspark(draft, "sglang")
    cfg = model.config
    _refuse_plain_qwen3_mismatch(cfg, "sglang")
    problem = sglang_dflash_causality_problem(False, cfg.layer_types or ["full_attention"] * cfg.num_hidden_layers)
    if problem:
        raise ConfigError(problem.replace("serve it with --format native/vllm (z-lab, vLLM)",
                                          "use --format vllm or speculators"))
    ids = engine_layer_ids(cfg.target_layer_ids, _target_layers(model), "sglang")  # out(k) as is
    heads = _dspark_fields(cfg)
    attention_mode = "mha" if cfg.num_key_value_heads == cfg.num_attention_heads else "gqa"
    text = {**_qwen3_layer_fields(cfg), "architectures": [SGLANG_ARCHITECTURE], "block_size": cfg.block_size,
            "num_target_layers": cfg.num_target_layers, "tie_word_embeddings": False,
            "dflash_config": {"target_layer_ids": ids, "mask_token_id": cfg.mask_token_id,
                              "projector_type": "dspark", "attention_mode": attention_mode, **heads},
            "dspark_config": {"target_layer_ids": ids, "mask_token_id": cfg.mask_token_id,
                              "block_size": cfg.block_size, "sample_from_anchor": True, **heads},
            "draftsmith_export": _export_block(model, "sglang", ids), "dtype": _dtype_name(model)}
    out = _write_config(out_dir, text)
    _save_weights(model, out, drop=("embed_tokens.weight", "lm_head.weight"))
    return out


def export_speculators(draft: Any, out_dir: str | Path, *, target: Any = None, **options: Any) -> Path:
    """DSpark in the vLLM ``speculators`` format, as speculators 0.9.0 saves it (``models/dspark/config.py``
    ``DSparkSpeculatorConfig`` ⊂ ``models/dflash/config.py`` ``DFlashSpeculatorConfig``) and ``vllm serve DIR``
    translates it (``update_dspark``: ``dspark_bonus_anchor = not sample_from_anchor``).

    * ``speculators_model_type: "dspark"``, ``architectures: ["DSparkDraftModel"]``, ``transformer_layer_config``
      (the draft layers' own Qwen3 config, ``vocab_size`` = the verifier's), ``draft_vocab_size`` = vocab
      (full: speculators omits ``lm_head`` and reloads it and ``embed_tokens`` from the verifier, ``dflash/core.py``
      ``load_verifier_weights``), ``target_hidden_size``, ``block_size``, ``mask_token_id``;
    * ``aux_hidden_state_layer_ids`` in **in(k)** (our ids +1; vLLM sets ``dflash_config.target_layer_ids`` =
      aux − 1); ``sample_from_anchor: true`` (its default for dspark, written anyway); ``sliding_window_non_causal:
      false``; ``markov_rank``, ``markov_head_type`` (vanilla/gated/rnn, same tensors and maths,
      ``dspark/model_definitions.py``), ``enable_confidence_head``, ``confidence_head_with_markov``;
    * ``speculators_config`` with the verifier (``target``, default: where the draft's target was loaded from —
      speculators' loader reads the verifier's weights, so it is required), a greedy proposal of ``block_size``
      tokens (``_build_base_config_kwargs``: block_size when sampling from the anchor);
    * tensors as speculators saves them: no ``embed_tokens`` / ``lm_head`` / ``d2t`` / ``t2d`` / ``verifier_*``.
    """
    _no_options("speculators", options)
    model = _require_dspark(draft, "speculators")
    cfg = model.config
    _refuse_plain_qwen3_mismatch(cfg, "speculators")
    block = dict(getattr(cfg, "draftsmith", None) or {})
    verifier = speculators_verifier(target, block)  # its loader reads the verifier's embedding, head, norm
    ids = engine_layer_ids(cfg.target_layer_ids, _target_layers(model), "speculators")  # in(k)
    layer = {**_qwen3_layer_fields(cfg), "model_type": "qwen3", "tie_word_embeddings": False}
    text = {
        "architectures": [SPECULATORS_ARCHITECTURE], "speculators_model_type": "dspark",
        "speculators_version": SPECULATORS_VERSION, "transformer_layer_config": layer,
        "draft_vocab_size": cfg.vocab_size, "target_hidden_size": cfg.hidden_size, "block_size": cfg.block_size,
        "mask_token_id": cfg.mask_token_id, "aux_hidden_state_layer_ids": ids, "sample_from_anchor": True,
        "sliding_window_non_causal": False, "tie_word_embeddings": False, **_dspark_fields(cfg),
        "speculators_config": {
            "algorithm": "dspark", "default_proposal_method": "greedy",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": cfg.block_size,
                                  "accept_tolerance": 0.0, "verifier_accept_k": 1}],
            "verifier": verifier,
        },
        "draftsmith_export": _export_block(model, "speculators", ids), "dtype": _dtype_name(model),
    }
    out = _write_config(out_dir, text)
    _save_weights(model, out, drop=("embed_tokens.weight", "lm_head.weight"))
    return out


# -- helpers -----------------------------------------------------------------------------------------------------
QWEN3_LAYER_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
                    "rope_parameters", "attention_bias", "attention_dropout", "layer_types", "use_sliding_window",
                    "sliding_window", "max_window_layers", "pad_token_id", "bos_token_id", "eos_token_id",
                    "initializer_range")
DSPARK_HEAD_KEYS = ("markov_rank", "markov_head_type", "enable_confidence_head", "confidence_head_with_markov")


def _qwen3_layer_fields(cfg: Any) -> dict[str, Any]:
    """The Qwen3 layer config the clients build their layers from (``model_type`` qwen3)."""
    fields = {k: getattr(cfg, k) for k in QWEN3_LAYER_KEYS if hasattr(cfg, k)}
    fields["rope_parameters"] = dict(cfg.rope_parameters or {})
    fields["model_type"] = "qwen3"
    return fields


def _dspark_fields(cfg: Any) -> dict[str, Any]:
    """The Markov / confidence head fields, explicit (SpecForge's defaults differ from ours)."""
    return {"markov_rank": int(cfg.markov_rank), "markov_head_type": str(cfg.markov_head_type),
            "enable_confidence_head": bool(cfg.enable_confidence_head),
            "confidence_head_with_markov": bool(cfg.confidence_head_with_markov)}


def _refuse_plain_qwen3_mismatch(cfg: Any, fmt: str) -> None:
    """SpecForge's and speculators' DFlash layers are plain Qwen3 (``Qwen3MLP`` without bias, rotary over the
    whole head): an MLP bias or a partial rotary would be dropped or misapplied."""
    if getattr(cfg, "mlp_bias", False):
        raise ConfigError(f"the {fmt!r} format has no MLP bias (its Qwen3 layers use Qwen3MLP): use --format vllm")
    check_whole_head_rotary(cfg, fmt, {"sglang": "SpecForge 0.2.0, SGLang",
                                       "speculators": "speculators 0.9.0"}.get(fmt, fmt))


def _require_dspark(draft: Any, fmt: str) -> Any:
    from .draft_qwen3 import Qwen3DSparkModel

    model = unwrap_model(draft)
    if not isinstance(model, Qwen3DSparkModel):
        raise ConfigError(f"the {fmt!r} DSpark export writes Qwen3DSparkModel drafts; got {type(model).__name__}")
    return model


def _no_options(fmt: str, options: dict[str, Any]) -> None:
    if options:
        raise ConfigError(f"{fmt} export takes only the option 'target', got {sorted(options)}")


def _target_layers(model: Any) -> int | None:
    block = getattr(model.config, "draftsmith", None) or {}
    return block.get("target_num_hidden_layers") or model.config.num_target_layers


def _export_block(model: Any, fmt: str, ids: list[int]) -> dict[str, Any]:
    """Our ``draftsmith`` block under ``draftsmith_export`` (so :func:`draftsmith.load_draft` goes through the
    format's reader), plus the engine ids and the fields no client stores."""
    cfg = model.config
    block = dict(getattr(cfg, "draftsmith", None) or {})
    block.update(format=fmt, exported_for=fmt, engine_layer_ids=list(ids),
                 engine_layer_id_convention=FORMATS[fmt].layer_id_convention,
                 num_anchors=int(cfg.num_anchors), freeze_embeddings=bool(cfg.freeze_embeddings))
    return block


def _dtype_name(model: Any) -> str:
    return str(next(model.parameters()).dtype).split(".")[-1]


def _write_config(out_dir: str | Path, text: dict[str, Any]) -> Path:
    out = Path(out_dir)
    if out.exists():
        present = sorted(p.name for p in out.iterdir()) if out.is_dir() else [out.name]
        if present:
            raise DraftsmithError(f"export directory {str(out)!r} is not empty ({', '.join(present)})")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(text, indent=2, sort_keys=True) + "\n")
    return out


def _save_weights(model: Any, out: Path, drop: tuple[str, ...] = ()) -> None:
    """``model.safetensors``: the draft's tensors (native names) minus ``drop``; non-finite weights refused."""
    from safetensors.torch import save_file

    state = {k: v for k, v in model.state_dict().items() if k not in drop and not k.startswith("rotary_emb.")}
    bad = non_finite_tensors(state)
    if bad:  # an engine would load NaN/inf weights silently
        raise DraftsmithError(f"refusing to export non-finite weights: {bad[:5]}")
    save_file({k: v.detach().to("cpu").contiguous() for k, v in state.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
