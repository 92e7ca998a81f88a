"""``train.init_from`` (``draftsmith train --init-from DIR``): fine-tune an existing draft instead of a fresh one.

The directory may be in any layout :func:`draftsmith.load_draft` reads — a draftsmith draft, one of our engine
exports, or a public checkpoint (z-lab DFlash, SpecForge / speculators EAGLE-3, …). The loaded draft is the
run's draft: its shape (depth, vocabulary, captured layers, block size) comes from the checkpoint, so the run's
``draft:`` section must be empty. It must fit the run's target — same method family, the draft class the target
resolves to, the target's hidden size and vocabulary, captured layer ids that exist on the target — each checked
with a one-line error before any training; its metadata is then restamped with this target.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError


def warm_start_draft(path: str, method: Any, spec: Any, target_config: Any, draft_options: dict[str, Any]
                     ) -> nn.Module:
    from ..checkpoint import load_draft, read_draft_metadata
    from ..conventions import text_config, validate_layer_ids
    from ..plugins import get_registry

    if draft_options:
        raise ConfigError(f"train.init_from takes the draft's shape from {path!r}; remove the draft options "
                          f"{sorted(draft_options)} (config section 'draft')")
    block = read_draft_metadata(path)
    registry = get_registry()
    if registry.draft_method(block["method"]) != registry.draft_method(method.name):
        raise ConfigError(f"train.init_from {path!r} holds a {block['method']} draft; this run trains "
                          f"{method.name} (it uses {registry.draft_method(method.name)} drafts)")
    draft = load_draft(path).float().train()
    wanted = spec.load_draft_cls()
    if type(draft) is not wanted:
        raise ConfigError(f"train.init_from {path!r} is a {type(draft).__name__}; this target "
                          f"({', '.join(getattr(target_config, 'architectures', None) or [])}) trains "
                          f"{wanted.__name__}")
    text = text_config(target_config)
    cfg = draft.config
    n_target = int(text.num_hidden_layers)
    checks = (("hidden size", int(getattr(cfg, "target_hidden_size", None) or cfg.hidden_size), int(text.hidden_size)),
              ("vocabulary", int(cfg.vocab_size), int(text.vocab_size)))
    for what, have, need in checks:
        if have != need:
            raise ConfigError(f"train.init_from {path!r} was trained for a target {what} of {have}; this target's "
                              f"is {need}")
    recorded = block.get("target_num_hidden_layers")
    if recorded is not None and int(recorded) != n_target:
        raise ConfigError(f"train.init_from {path!r} was trained on a {recorded}-layer target; this target has "
                          f"{n_target} layers (its captured layer ids would mean other layers)")
    validate_layer_ids(cfg.target_layer_ids, n_target)
    stamp = dict(getattr(cfg, "draftsmith", None) or block)
    stamp.pop("read_from", None)
    stamp.update(method=block["method"], target_architectures=list(getattr(target_config, "architectures", None) or []),
                 target_model_type=getattr(text, "model_type", None), target_num_hidden_layers=n_target,
                 target_name_or_path=getattr(target_config, "_name_or_path", None) or None,
                 target_layer_ids=list(cfg.target_layer_ids), init_from=str(path))
    cfg.draftsmith = stamp
    return draft
