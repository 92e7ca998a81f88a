"""DSpark registrations (torch-free: imported by `draftsmith list-drafts`), the DSpark layer-id rule, and the
names NeMo AutoModel users know, as views over draftsmith's live registry."""

from __future__ import annotations

from draftsmith import DraftSpec, resolve_draft_spec
from draftsmith.registry import DraftRegistryView

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


def resolve_dspark_draft_spec(architectures):
    """The DSpark draft spec for a target's ``config.architectures`` (first match wins)."""
    return resolve_draft_spec("dspark", architectures)


__all__ = ["DraftSpec", "ARCHITECTURES", "SPECS", "DSPARK_DRAFT_REGISTRY", "resolve_dspark_draft_spec"]
