"""DFlash registrations, option tables and the DFlash layer-id rule (torch-free: imported by `draftsmith
list-drafts`), and the names NeMo AutoModel users know, as views over draftsmith's live registry."""

from __future__ import annotations

from typing import Any

from draftsmith import DraftSpec, resolve_draft_spec
from draftsmith.conventions import MATRIX_FAMILIES
from draftsmith.errors import ConfigError
from draftsmith.formats import INPUT_OF_LAYER, FormatSpec
from draftsmith.views import DraftRegistryView

# Qwen3-shaped targets first; Llama-shaped targets work with the same config-driven class (q_norm/k_norm are
# part of the draft, not of the target).
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
    DraftSpec(method="dflash", architectures=ARCHITECTURES,
              draft_cls="draftsmith_dflash.draft_qwen3:Qwen3DFlashDraftModel",
              description="DFlash block-diffusion draft: KV-injected target context, non-causal blocks"),
)

# -- checkpoint formats (writers in export.py, readers in readers.py; docs/formats.md) ---------------------------
def _foreign(config: dict[str, Any]) -> bool:
    """Not ours to read as a public layout: a directory with draftsmith's own block loads natively."""
    return isinstance(config.get("draftsmith"), dict)


def is_zlab_dflash(config: dict[str, Any]) -> bool:
    """z-lab ``DFlashDraftModel`` (dflash/model.py; what SpecForge, vLLM and SGLang also read): exactly that
    architecture (not ``DFlash2DraftModel``, not DSpark's ``Qwen3DSparkModel``, not EAGLE's), no speculators
    keys."""
    return (not _foreign(config) and "DFlashDraftModel" in (config.get("architectures") or [])
            and "speculators_model_type" not in config)


def is_speculators_dflash(config: dict[str, Any]) -> bool:
    """speculators' DFlash layout (``speculators_model_type: dflash``; models/dflash/config.py)."""
    return not _foreign(config) and config.get("speculators_model_type") == "dflash"


FORMATS = (
    FormatSpec("dflash", "native", writer="draftsmith_dflash.export:export_native", clients=("draftsmith",),
               summary="the z-lab DFlashDraftModel layout with draftsmith metadata"),
    FormatSpec("dflash", "zlab", writer="draftsmith_dflash.export:export_zlab",
               reader="draftsmith_dflash.readers:read_zlab", detect="draftsmith_dflash.registry:is_zlab_dflash",
               clients=("z-lab dflash", "SpecForge", "vLLM", "SGLang"),
               summary="z-lab DFlashDraftModel: dflash_config ids out(k), no embedding/lm_head; reads public "
                       "z-lab checkpoints"),
    FormatSpec("dflash", "vllm", writer="draftsmith_dflash.export:export_native", clients=("vLLM",),
               summary="= native: vLLM's qwen3_dflash.py reads the z-lab layout (adds 1 to the ids itself)"),
    FormatSpec("dflash", "sglang", writer="draftsmith_dflash.export:export_sglang", clients=("SGLang",),
               summary="the z-lab layout, refusing drafts SGLang would run with other in-block causality"),
    FormatSpec("dflash", "speculators", writer="draftsmith_dflash.export:export_speculators",
               reader="draftsmith_dflash.readers:read_speculators",
               detect="draftsmith_dflash.registry:is_speculators_dflash", clients=("speculators", "vLLM"),
               layer_id_convention=INPUT_OF_LAYER,
               summary="speculators dflash (what `vllm serve DIR` takes): transformer_layer_config, "
                       "aux_hidden_state_layer_ids in(k), verifier named"),
)

DFlashDraftSpec = DraftSpec
DFLASH_DRAFT_REGISTRY = DraftRegistryView("dflash")


def resolve_dflash_draft_spec(architectures):
    """The DFlash draft spec for a target's ``config.architectures`` (first match wins)."""
    return resolve_draft_spec("dflash", architectures)


# -- option tables ---------------------------------------------------------------------------------------------
# Declared once: plugin.py hands them to the MethodSpec (core checks and routes the user's options), config.py,
# objective.py and drafting.py take their defaults from them. Torch-free (`list-drafts` imports plugin.py).
# Draft options (config.build_dflash_config).
DRAFT_OPTIONS: dict[str, Any] = {
    "mask_token_id": None,  # required: a reserved id, never pad/eos (Qwen3: 151669)
    "block_size": 16,  # anchor + block_size − 1 drafts per pass
    "num_draft_layers": 5, "num_hidden_layers": None,  # the draft depth (two names)
    "target_layer_ids": None,  # default: build_target_layer_ids below
    "num_feature_layers": None,  # captured layers when the default rule picks them; default: the depth
    "causal": False,  # in-block causal attention (JetSpec variant)
    "sliding_window": None,  # all layers windowed to this many context positions
    "intermediate_size": None,  # default: the target's
    "rotary": "target",  # target: the target's rotary fraction; full: rotate the whole head (servable everywhere)
}
# Objective options (objective.DFlashObjective; the ``method_options:`` section).
OBJECTIVE_OPTIONS: dict[str, Any] = {
    "num_anchors": 512,  # blocks per sequence per step
    "loss_decay_gamma": 7.0,  # slot weight exp(−(k−1)/γ); None = uniform
    "first_slot_weight": 1.0,  # multiplies slot 1's weight (the first drafted token; its acceptance gates all)
    "kd_weight": 0.0, "kd_temperature": 1.0,  # optional self-logit distillation term
    "seed": 0,  # of the anchor-draw stream
    "attention_backend": "auto",  # grouped on CPU, sdpa on CUDA; see draftsmith.nn.block_mask.resolve_backend
}
# Drafter options (drafting.DFlashDrafter; ``draftsmith eval --drafter-option``).
DRAFTER_OPTIONS: dict[str, Any] = {
    "attention_backend": "sdpa",  # accepted for symmetry: one block over a visible prefix is plain SDPA
}


def _spread(lo: int, hi: int, k: int) -> list[int]:
    """``k`` ids evenly spread over ``[lo, hi]`` with Python's ``round`` (ties to even, as z-lab/NeMo)."""
    if k == 1:
        return [lo]
    return [int(round(lo + i * (hi - lo) / (k - 1))) for i in range(k)]


def build_target_layer_ids(num_target_layers: int, num_draft_layers: int = 5, *, num_feature_layers: int | None = None,
                           **_options) -> list[int]:
    """Default target layers (output-of-layer ids) a DFlash draft reads, one per draft layer by default.

    The z-lab rule: one layer → ``[N // 2]``; otherwise ``k`` ids spread evenly from 1 to ``N - 3`` (rounded
    half to even): (36, 5) → [1, 9, 17, 25, 33], (28, 5) → [1, 7, 13, 19, 25], (32, 5) → [1, 8, 15, 22, 29],
    (36, 3) → [1, 17, 33], (36, 1) → [18].

    Shallow targets: when ``[1, N - 3]`` holds fewer than ``k`` layers the z-lab rule repeats ids (z-lab gives
    (4, 2) → [1, 1]). We then widen the range step by step — ``[1, N - 2]``, ``[0, N - 2]``, ``[0, N - 1]`` — and
    spread over the first range with room for ``k`` distinct ids; if even all ``N`` layers are too few, every
    layer ``0..N-1`` is used (fewer ids than asked). So (4, 2) → [1, 2], (4, 3) → [0, 1, 2], (4, 5) →
    [0, 1, 2, 3], (7, 5) → [1, 2, 3, 4, 5]. Results are always distinct, increasing and inside ``[0, N - 1]``.

    ``num_feature_layers`` asks for a different number of captured layers than draft layers. Other keyword
    options (the method's training options) are accepted and ignored, so the policy can be called with them.
    """
    n = num_target_layers
    k = num_draft_layers if num_feature_layers is None else num_feature_layers
    for name, value in (("num_target_layers", n), ("num_draft_layers/num_feature_layers", k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"build_target_layer_ids: {name} must be a positive int, got {value!r}")
    if k == 1:
        return [n // 2]
    for lo, hi in ((1, n - 3), (1, n - 2), (0, n - 2), (0, n - 1)):
        if hi - lo + 1 >= k:  # room for k distinct ids: the spread step is >= 1
            return _spread(lo, hi, k)
    return list(range(n))


__all__ = ["DFlashDraftSpec", "ARCHITECTURES", "SPECS", "DFLASH_DRAFT_REGISTRY", "resolve_dflash_draft_spec",
           "build_target_layer_ids", "DRAFT_OPTIONS", "OBJECTIVE_OPTIONS", "DRAFTER_OPTIONS"]
