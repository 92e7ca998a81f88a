"""EAGLE-3 draft for gpt-oss targets: the dense EAGLE-3 draft with the target's YaRN rotary.

Main difference with :class:`LlamaEagle3DraftModel`: none in structure. gpt-oss uses YaRN (base 150000, factor 32,
``original_max_position_embeddings`` 4096, ``beta_fast`` 32, ``beta_slow`` 1) whose attention ("concentration")
factor ``0.1·ln(factor) + 1`` scales cos and sin. The draft keeps the target's rope parameters and computes them
with transformers' YaRN init, so draft and target positions agree at every length. (SpecForge trains gpt-oss drafts
with plain Llama RoPE — its rotary silently falls back for "yarn" — a latent long-context bug.) gpt-oss applies
rotary to the two halves of each head (``first·cos − second·sin``, ``second·cos + first·sin``), which is exactly
the Llama ``rotate_half`` form on cos/sin duplicated to the full head dim, i.e. what draftsmith's rotary produces.

Only full rotary is supported: a ``partial_rotary_factor`` other than 1 raises (the engines' Llama EAGLE-3 head
rotates the whole head).
"""

from __future__ import annotations

from typing import Any

from draftsmith.conventions import partial_rotary_factor, text_config
from draftsmith.errors import ConfigError

from .config import LlamaEagle3Config
from .draft_llama import LlamaEagle3DraftModel, build_eagle3_config

DRAFT_CLASS = "draftsmith_eagle.draft_gpt_oss:GptOssEagle3DraftModel"


def check_full_rotary(config: Any) -> None:
    factor = partial_rotary_factor(config)
    if factor != 1.0:
        raise ConfigError(f"GptOssEagle3DraftModel supports only full rotary (partial_rotary_factor=1.0), got "
                          f"partial_rotary_factor={factor}")


class GptOssEagle3DraftModel(LlamaEagle3DraftModel):
    @classmethod
    def build_draft_config(cls, target_config: Any, **options: Any) -> LlamaEagle3Config:
        """As :meth:`LlamaEagle3DraftModel.build_draft_config`; the rope parameters (YaRN) are the target's."""
        check_full_rotary(text_config(target_config))
        return build_eagle3_config(cls, DRAFT_CLASS, target_config, dict(options))

    def __init__(self, config: LlamaEagle3Config) -> None:
        check_full_rotary(config)
        super().__init__(config)
