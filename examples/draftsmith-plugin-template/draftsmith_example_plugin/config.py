"""The ``medusa`` draft config, built from the target's config, and the method's option tables.

Every size comes from the target through :func:`draftsmith.conventions.draft_fields` (the same reading of a
target config that the first-party methods use), so any architecture with a final hidden state and an
``lm_head`` works. The option defaults are the tables in registry.py (declared once, torch-free).
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

from draftsmith.checkpoint import draft_metadata
from draftsmith.conventions import check_option_names, draft_fields
from draftsmith.errors import ConfigError

from .registry import DRAFT_OPTIONS



class MedusaDraftConfig(PretrainedConfig):
    model_type = "draftsmith_medusa"

    def __init__(self, hidden_size: int = 64, num_heads: int = 3, vocab_size: int = 128, **kwargs: Any) -> None:
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.vocab_size = vocab_size
        super().__init__(**kwargs)


def build_medusa_config(target_config: Any, draft_class: str, **options: Any) -> MedusaDraftConfig:
    check_option_names("medusa draft", options, DRAFT_OPTIONS)
    num_heads = options.get("num_heads", DRAFT_OPTIONS["num_heads"])
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ConfigError(f"num_heads must be a positive int, got {num_heads!r}")
    fields = draft_fields(target_config)
    config = MedusaDraftConfig(hidden_size=fields["hidden_size"], num_heads=num_heads,
                               vocab_size=fields["vocab_size"])
    config.draftsmith = draft_metadata("medusa", draft_class, target_config)
    return config
