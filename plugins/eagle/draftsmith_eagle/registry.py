"""EAGLE registrations (torch-free: imported by `draftsmith list-drafts`).

Also the names NeMo AutoModel users know, as views over draftsmith's live registry.
"""

from __future__ import annotations

from draftsmith import DraftSpec, resolve_draft_spec
from draftsmith.views import DraftRegistryView

# Same-shaped (Llama-like) dense targets: one config-driven draft class serves them all.
DENSE_ARCHITECTURES = (
    "LlamaForCausalLM",
    "Phi3ForCausalLM",
    "Qwen3ForCausalLM",
    "Qwen3MoeForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
)

SPECS = (
    DraftSpec(method="eagle1", architectures=DENSE_ARCHITECTURES,
              draft_cls="draftsmith_eagle.draft_llama_v12:LlamaEagleDraftModel",
              description="EAGLE-1/2 feature-regression draft (Llama-shaped decoder layer)"),
    DraftSpec(method="eagle3", architectures=DENSE_ARCHITECTURES,
              draft_cls="draftsmith_eagle.draft_llama:LlamaEagle3DraftModel",
              description="EAGLE-3 draft: fused low/mid/high target features, TTT-trained"),
    DraftSpec(method="eagle3", architectures=("GptOssForCausalLM",),
              draft_cls="draftsmith_eagle.draft_gpt_oss:GptOssEagle3DraftModel",
              description="EAGLE-3 draft with the gpt-oss target's YaRN rotary"),
)

EAGLE1_DRAFT_REGISTRY = DraftRegistryView("eagle1")
EAGLE3_DRAFT_REGISTRY = DraftRegistryView("eagle3")


def resolve_eagle1_draft_spec(architectures):
    """The EAGLE-1/2 draft spec for a target's ``config.architectures`` (first match wins)."""
    return resolve_draft_spec("eagle1", architectures)


def resolve_eagle3_draft_spec(architectures):
    """The EAGLE-3 draft spec for a target's ``config.architectures`` (first match wins)."""
    return resolve_draft_spec("eagle3", architectures)


def default_aux_layer_ids(num_target_layers: int, num_aux_layers: int = 3, **_options) -> list[int]:
    """EAGLE-3 default captured layers (output-of-layer ids).

    Three layers: ``[1, N//2 - 1, N - 4]`` (NeMo AutoModel's default; equal to vLLM's ``(2, N//2, N-3)`` in
    its input-of-layer convention). Shallow targets, where that collides or leaves ``[0, N-2]`` (e.g. N=5 →
    [1,1,1], N=6 → [1,2,2]), and any other ``num_aux_layers`` use an even spread over ``[0, N-2]`` instead of an
    error: ``round(i·(N-2)/(k-1))`` for i = 0..k-1 — never the last layer, whose HF output is post-norm.
    """
    n, k = int(num_target_layers), int(num_aux_layers)
    if k < 1:
        raise ValueError(f"num_aux_layers must be >= 1, got {k}")
    if k == 3:
        ids = [1, n // 2 - 1, n - 4]
        if len(set(ids)) == 3 and ids == sorted(ids) and ids[0] >= 0 and ids[-1] <= n - 2:
            return ids
    if n - 1 < k:
        raise ValueError(f"a target with {n} layers has only {max(n - 1, 0)} usable feature layers "
                         f"(0..N-2); cannot pick {k} distinct ids")
    if k == 1:
        return [(n - 2) // 2]
    return [round(i * (n - 2) / (k - 1)) for i in range(k)]


def default_eagle1_layer_ids(num_target_layers: int, **_options) -> list[int]:
    """EAGLE-1/2 uses the final (post-norm) hidden state only: no intermediate layers."""
    return []


# NeMo AutoModel's name for the spec type.
__all__ = [
    "DraftSpec", "DENSE_ARCHITECTURES", "SPECS", "EAGLE1_DRAFT_REGISTRY", "EAGLE3_DRAFT_REGISTRY",
    "resolve_eagle1_draft_spec", "resolve_eagle3_draft_spec", "default_aux_layer_ids", "default_eagle1_layer_ids",
]
