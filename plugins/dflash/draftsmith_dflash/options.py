"""Option names of the DFlash method (torch-free).

The trainer and the decoder may hand a component the whole method option set (MethodSpec.default_options
overridden by the user's config) plus draft options; each component uses its own names, accepts the others
silently, and rejects names no DFlash component knows (a typo must not be ignored).
"""

from __future__ import annotations

from typing import Any, Iterable

from draftsmith.errors import ConfigError

DRAFT_OPTIONS = frozenset({"mask_token_id", "block_size", "num_draft_layers", "num_hidden_layers", "target_layer_ids",
                           "num_feature_layers", "causal", "sliding_window", "intermediate_size"})
OBJECTIVE_OPTIONS = frozenset({"num_anchors", "loss_decay_gamma", "kd_weight", "kd_temperature", "seed",
                               "attention_backend"})
DRAFTER_OPTIONS = frozenset({"attention_backend"})
ALL_OPTIONS = DRAFT_OPTIONS | OBJECTIVE_OPTIONS | DRAFTER_OPTIONS


def check_options(component: str, options: Iterable[str], own: Iterable[str] = ()) -> None:
    unknown = sorted(set(options) - ALL_OPTIONS - set(own))
    if unknown:
        raise ConfigError(f"{component}: unknown DFlash option(s) {unknown}; known options: {sorted(ALL_OPTIONS)}")


def check_matches_draft(component: str, options: dict[str, Any], draft_config: Any) -> None:
    """Draft-shape options given to a component must agree with the draft it was handed."""
    facts = {"block_size": draft_config.block_size, "mask_token_id": draft_config.mask_token_id,
             "target_layer_ids": list(draft_config.target_layer_ids),
             "num_draft_layers": draft_config.num_hidden_layers}
    for name, actual in facts.items():
        given = options.get(name)
        if given is not None and (list(given) if name == "target_layer_ids" else given) != actual:
            raise ConfigError(f"{component}: option {name}={given!r} disagrees with the draft ({name}={actual!r}); "
                              f"{name} is fixed when the draft is built")
