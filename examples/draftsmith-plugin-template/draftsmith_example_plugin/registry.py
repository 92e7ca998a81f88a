"""The template's draft registrations (torch-free: imported by ``draftsmith list-drafts``).

(a) Architectures appended to an existing method with an existing draft class: OLMo (1) and Cohere targets are
    decoders whose layers hand forward hooks a plain hidden state, so the EAGLE-3 plugin's config-driven dense
    draft serves them unchanged (draftsmith itself registers OLMo 2/3; check a new family with
    ``python benchmarks/coverage_probe.py --archs YourForCausalLM`` before registering it).
(b) The drafts of the template's own method, ``medusa``, and its option tables (name → default), declared once:
    plugin.py hands them to the ``MethodSpec`` (core validates the user's ``draft:`` / ``method_options:`` /
    drafter options against them), config.py / objective.py / drafting.py read their defaults from them.
"""

from __future__ import annotations

from typing import Any

from draftsmith import DraftSpec

DRAFT_OPTIONS = {"num_heads": 3}  # K: head k predicts the token k + 1 steps past the target's next token
OBJECTIVE_OPTIONS: dict[str, Any] = {}
DRAFTER_OPTIONS: dict[str, Any] = {}

SPECS = (
    DraftSpec(method="eagle3", architectures=("OlmoForCausalLM", "CohereForCausalLM"),
              draft_cls="draftsmith_eagle.draft_llama:LlamaEagle3DraftModel"),
    DraftSpec(method="medusa",
              architectures=("LlamaForCausalLM", "Qwen3ForCausalLM", "Qwen2ForCausalLM", "OlmoForCausalLM"),
              draft_cls="draftsmith_example_plugin.draft_medusa:MedusaDraftModel"),
)
