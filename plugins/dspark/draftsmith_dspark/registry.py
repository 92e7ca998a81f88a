"""DSpark registrations (torch-free: imported by `draftsmith list-drafts`), the DSpark layer-id rule, and the
names NeMo AutoModel users know, as views over draftsmith's live registry."""

from __future__ import annotations

from typing import Any, Sequence

from draftsmith import DraftSpec, resolve_draft_spec
from draftsmith.errors import ConfigError
from draftsmith.views import DraftRegistryView

ARCHITECTURES = (
    "Qwen3ForCausalLM",
    "Qwen3MoeForCausalLM",
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "MistralForCausalLM",
)

SPECS = (
    DraftSpec(method="dspark", architectures=ARCHITECTURES,
              draft_cls="draftsmith_dspark.draft_qwen3:Qwen3DSparkModel",
              description="DSpark: parallel block backbone + Markov head + confidence head"),
)

DSPARK_DRAFT_REGISTRY = DraftRegistryView("dspark")

DEFAULT_NUM_FEATURE_LAYERS = 5


def resolve_dspark_draft_spec(architectures):
    """The DSpark draft spec for a target's ``config.architectures`` (first match wins)."""
    return resolve_draft_spec("dspark", architectures)


def validate_target_layer_ids(layer_ids: Sequence[Any], num_target_layers: int) -> list[int]:
    """Check explicit feature-layer ids: non-empty, strictly increasing, each ``-1`` (the embedding output)
    or an output-of-layer id in ``[0, num_target_layers - 1]``. Returns them as a list of ints."""
    if isinstance(layer_ids, (str, bytes)) or not isinstance(layer_ids, Sequence):
        raise ConfigError(f"target_layer_ids must be a list of ints, got {layer_ids!r}")
    ids = list(layer_ids)
    if not ids:
        raise ConfigError("target_layer_ids must not be empty")
    for i in ids:
        if isinstance(i, bool) or not isinstance(i, int):
            raise ConfigError(f"target_layer_ids must be ints, got {i!r} in {ids}")
        if i != -1 and not 0 <= i < num_target_layers:
            raise ConfigError(f"target layer id {i} is out of range for a {num_target_layers}-layer target: ids "
                              f"must be -1 (embedding output) or in [0, {num_target_layers - 1}]")
    if any(b <= a for a, b in zip(ids, ids[1:])):
        raise ConfigError(f"target_layer_ids must be strictly increasing, got {ids}")
    return ids


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
           "build_target_layer_ids", "validate_target_layer_ids"]
