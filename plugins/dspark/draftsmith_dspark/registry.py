"""DSpark registrations, option tables and the layer-id rule (torch-free: imported by `draftsmith list-drafts`),
plus the names NeMo AutoModel users know, as views over draftsmith's live registry.

The option tables (name → default; ``None`` = derived from the target or the draft) are declared once, here:
plugin.py hands them to the ``MethodSpec`` (core checks the user's ``draft:`` / ``method_options:`` / drafter
options against them and routes each to the components declaring it), config.py, objective.py and drafting.py
take their defaults from them. They live in this torch-free module, not in config.py (which imports
transformers), because ``list-drafts`` imports plugin.py; config.py re-exports them.
"""

from __future__ import annotations

from typing import Any, Sequence

from draftsmith import DraftSpec, resolve_draft_spec
from draftsmith.conventions import MATRIX_FAMILIES, validate_layer_ids
from draftsmith.errors import ConfigError
from draftsmith.formats import INPUT_OF_LAYER, FormatSpec
from draftsmith.views import DraftRegistryView

ARCHITECTURES = (
    "Qwen3ForCausalLM",
    "Qwen3MoeForCausalLM",
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "MistralForCausalLM",
    "Phi3ForCausalLM",
    "GptOssForCausalLM",
) + MATRIX_FAMILIES  # the families the coverage matrix backs (draftsmith.conventions)

SPECS = (
    DraftSpec(method="dspark", architectures=ARCHITECTURES,
              draft_cls="draftsmith_dspark.draft_qwen3:Qwen3DSparkModel",
              description="DSpark: parallel block backbone + Markov head + confidence head"),
)

# -- checkpoint formats (writers in export.py, readers in readers.py; docs/formats.md) ---------------------------
def _archs(config: dict[str, Any]) -> list[str]:
    return list(config.get("architectures") or [])


def _native(config: dict[str, Any]) -> bool:
    """Our own layout (a ``draftsmith`` block): load_draft reads it natively, no detector may claim it."""
    return isinstance(config.get("draftsmith"), dict)


def is_vllm_dspark(config: dict[str, Any]) -> bool:
    """``Qwen3DSparkModel`` without draftsmith metadata: our ``vllm`` export, DeepSpec / NeMo checkpoints."""
    return ("Qwen3DSparkModel" in _archs(config) and not _native(config)
            and "speculators_model_type" not in config)


def is_sglang_dspark(config: dict[str, Any]) -> bool:
    """SGLang / SpecForge ``DSparkDraftModel`` (not the speculators layout, which shares the class name)."""
    return ("DSparkDraftModel" in _archs(config) and not _native(config)
            and "speculators_model_type" not in config)


def is_speculators_dspark(config: dict[str, Any]) -> bool:
    return config.get("speculators_model_type") == "dspark" and not _native(config)


FORMATS = (
    FormatSpec("dspark", "native", writer="draftsmith_dspark.export:export_native", clients=("draftsmith",),
               summary="Qwen3DSparkModel (NeMo AutoModel / DeepSpec layout) with draftsmith metadata"),
    FormatSpec("dspark", "vllm", writer="draftsmith_dspark.export:export_vllm",
               reader="draftsmith_dspark.readers:read_vllm", detect="draftsmith_dspark.registry:is_vllm_dspark",
               clients=("vLLM",),  # the file holds out(k); vLLM adds 1 (= the in(k) it captures)
               summary="Qwen3DSparkModel: target_layer_ids out(k) (vLLM reads +1), sample_from_anchor true, "
                       "dspark_bonus_anchor false, vanilla Markov head only"),
    FormatSpec("dspark", "sglang", writer="draftsmith_dspark.export:export_sglang",
               reader="draftsmith_dspark.readers:read_sglang", detect="draftsmith_dspark.registry:is_sglang_dspark",
               clients=("SGLang", "SpecForge"),
               summary="DSparkDraftModel: dflash_config + dspark_config (ids out(k)), no embed_tokens/lm_head"),
    FormatSpec("dspark", "speculators", writer="draftsmith_dspark.export:export_speculators",
               reader="draftsmith_dspark.readers:read_speculators",
               detect="draftsmith_dspark.registry:is_speculators_dspark", clients=("speculators", "vLLM"),
               layer_id_convention=INPUT_OF_LAYER,
               summary="speculators dspark (`vllm serve DIR`): transformer_layer_config, aux ids in(k), verifier"),
)

DSPARK_DRAFT_REGISTRY = DraftRegistryView("dspark")

DEFAULT_NUM_FEATURE_LAYERS = 5

# -- option tables ---------------------------------------------------------------------------------------------
# Draft options (config.build_dspark_config; methods.md §3.8 defaults: γ = 7, 5 layers, rank 256 vanilla).
DRAFT_OPTIONS: dict[str, Any] = {
    "mask_token_id": None,  # required: a reserved id, never pad/eos (Qwen3: 151669)
    "num_draft_layers": 5,
    "target_layer_ids": None,  # default: build_target_layer_ids(N, num_feature_layers)
    "num_feature_layers": None,  # default: num_draft_layers
    "block_size": 7,  # γ: drafts per block (sample-from-anchor: the anchor slot predicts too)
    "num_anchors": 512,  # stored in the config: the objective's default sample width
    "markov_rank": 256,  # 0 disables the Markov head
    "markov_head_type": "vanilla",
    "enable_confidence_head": None,  # default: confidence_head_alpha > 0
    "confidence_head_alpha": 1.0,  # also an objective option: a draft trained without the term gets no head
    "confidence_head_with_markov": True,
    "freeze_embeddings": True,
    "intermediate_size": None,  # default: the target's
    "rotary": "target",  # target: the target's rotary fraction; full: rotate the whole head (servable everywhere)
}
# Objective options (objective.DSparkObjective; the ``method_options:`` section).
OBJECTIVE_OPTIONS: dict[str, Any] = {
    "loss_decay_gamma": 4.0,  # slot weight exp(−k/γ_d); None = uniform
    "first_slot_weight": 1.0,  # multiplies slot 1's weight (the first drafted token; its acceptance gates all)
    "ce_loss_alpha": 0.1,
    "l1_loss_alpha": 0.9,
    "confidence_head_alpha": 1.0,
    "loss_chunk_size": None,  # slots per vocab chunk; None = loss.default_chunk_size(V)
    "seed": 0,  # of the anchor-draw stream
    "attention_backend": "auto",  # grouped on CPU, sdpa on CUDA; see draftsmith.nn.block_mask.resolve_backend
    "num_anchors": None,  # anchors per sequence per step; None = the draft config's
}
# Drafter options (drafting.DSparkDrafter; ``draftsmith eval --drafter-option``).
DRAFTER_OPTIONS: dict[str, Any] = {
    "confidence_threshold": None,  # θ in (0, 1]: cut a proposal at the first slot with σ(c_k/T_k) < θ
    "confidence_temperatures": None,  # γ STS temperatures (scheduling.fit_sts_temperatures)
}


def resolve_dspark_draft_spec(architectures):
    """The DSpark draft spec for a target's ``config.architectures`` (first match wins)."""
    return resolve_draft_spec("dspark", architectures)


def validate_target_layer_ids(layer_ids: Sequence[Any], num_target_layers: int) -> list[int]:
    """Explicit feature-layer ids: non-empty, strictly increasing (the ``fc`` input order), each ``-1`` (the
    embedding output) or an output-of-layer id in ``[0, num_target_layers - 1]`` (the core rule)."""
    return validate_layer_ids(layer_ids, num_target_layers, name="target_layer_ids", increasing=True)


def build_target_layer_ids(num_target_layers: int, num_feature_layers: int | None = None,
                           **options: Any) -> list[int]:
    """DSpark's default feature layers (NeMo AutoModel ``dspark/registry.py`` rule), output-of-layer ids.

    ``k = clamp(num_feature_layers, 1, N - 1)`` ids spread evenly over ``[1, N - 1]``: ``[N - 1]`` when
    ``k = 1``, else ``sorted(set(round(1 + i·(N - 2)/(k - 1))))`` with Python's banker's rounding, so tiny
    targets can get fewer than ``k`` ids. N=36, k=5 → [1, 10, 18, 26, 35]; N=28, k=1 → [27].

    ``num_feature_layers`` defaults to the method's ``num_draft_layers`` option (one feature layer per draft
    layer, as NeMo), else 5. An explicit ``target_layer_ids`` option wins and is validated instead (``-1``,
    the embedding output, is allowed there). Note the rule ends at the last layer: our hooks capture it
    pre-final-norm, but SGLang's EAGLE-3 capture cannot serve it (pass explicit ids for SGLang export).
    """
    if isinstance(num_target_layers, bool) or not isinstance(num_target_layers, int):
        raise ConfigError(f"num_target_layers must be an int, got {num_target_layers!r}")
    if num_target_layers < 2:
        raise ConfigError(f"DSpark needs a target with at least 2 layers, got {num_target_layers}")
    explicit = options.get("target_layer_ids")
    if explicit is not None:
        return validate_target_layer_ids(explicit, num_target_layers)
    k = num_feature_layers if num_feature_layers is not None else options.get("num_draft_layers")
    k = DEFAULT_NUM_FEATURE_LAYERS if k is None else k
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"num_feature_layers must be a positive int, got {k!r}")
    last = num_target_layers - 1
    k = min(k, last)
    if k == 1:
        return [last]
    step = (last - 1) / (k - 1)
    return sorted({int(round(1 + i * step)) for i in range(k)})


__all__ = ["DraftSpec", "ARCHITECTURES", "SPECS", "DSPARK_DRAFT_REGISTRY", "resolve_dspark_draft_spec",
           "build_target_layer_ids", "validate_target_layer_ids", "DRAFT_OPTIONS", "OBJECTIVE_OPTIONS",
           "DRAFTER_OPTIONS"]
