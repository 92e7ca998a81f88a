"""DFlash registrations (torch-free: imported by `draftsmith list-drafts`), the DFlash layer-id rule, and the
names NeMo AutoModel users know, as views over draftsmith's live registry."""

from __future__ import annotations

from draftsmith import DraftSpec, resolve_draft_spec
from draftsmith.registry import DraftRegistryView

# Qwen3-shaped targets first; Llama-shaped targets work with the same config-driven class (q_norm/k_norm are
# part of the draft, not of the target).
ARCHITECTURES = (
    "Qwen3ForCausalLM",
    "Qwen3MoeForCausalLM",
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "MistralForCausalLM",
)

SPECS = (
    DraftSpec(method="dflash", architectures=ARCHITECTURES,
              draft_cls="draftsmith_dflash.draft_qwen3:Qwen3DFlashDraftModel",
              description="DFlash block-diffusion draft: KV-injected target context, non-causal blocks"),
)

DFlashDraftSpec = DraftSpec
DFLASH_DRAFT_REGISTRY = DraftRegistryView("dflash")


def resolve_dflash_draft_spec(architectures):
    """The DFlash draft spec for a target's ``config.architectures`` (first match wins)."""
    return resolve_draft_spec("dflash", architectures)


__all__ = ["DFlashDraftSpec", "ARCHITECTURES", "SPECS", "DFLASH_DRAFT_REGISTRY", "resolve_dflash_draft_spec"]
