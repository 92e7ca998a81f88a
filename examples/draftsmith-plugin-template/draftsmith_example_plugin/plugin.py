"""Hook implementations of the template plugin. Keep this module light: no torch import here.

(a) Appends an architecture to an existing method with an existing draft class: OLMo targets are Llama-shaped,
    so the EAGLE-3 plugin's config-driven dense draft serves them unchanged.
(b) Registers a whole new method, ``medusa``: K extra decoding heads on the target's last hidden state, with
    its own draft class, training objective and drafting procedure.
"""

from __future__ import annotations

import draftsmith
from draftsmith import DraftSpec, MethodSpec


@draftsmith.hookimpl
def draftsmith_register_drafts(registry):
    registry.register(DraftSpec(
        method="eagle3",
        architectures=("OlmoForCausalLM", "Olmo2ForCausalLM"),
        draft_cls="draftsmith_eagle.draft_llama:LlamaEagle3DraftModel",
    ))
    registry.register(DraftSpec(
        method="medusa",
        architectures=("LlamaForCausalLM", "Qwen3ForCausalLM", "Qwen2ForCausalLM", "OlmoForCausalLM"),
        draft_cls="draftsmith_example_plugin.draft_medusa:MedusaDraftModel",
    ))


@draftsmith.hookimpl
def draftsmith_register_methods(registry):
    registry.register_method(MethodSpec(
        name="medusa",
        summary="Medusa-style heads: head k predicts the token k+1 steps past the target's next token",
        objective="draftsmith_example_plugin.medusa:MedusaObjective",
        drafter="draftsmith_example_plugin.medusa:MedusaDrafter",
        default_options={},
    ))
