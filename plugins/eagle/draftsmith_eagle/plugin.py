"""The EAGLE plugin's hook implementations (the `draftsmith` entry point; torch-free)."""

from __future__ import annotations

import draftsmith
from draftsmith import MethodSpec

from .registry import SPECS

# Objective option defaults (the user's `method_options` override them). Draft options (layer ids, depth, draft
# vocab size, EAGLE-3.1 switches) go to the draft instead; None here = "whatever the draft was built with".
EAGLE1_OPTIONS = {"hidden_loss_weight": 1.0, "token_loss_weight": 0.1, "feature_noise": 0.1,
                  "freeze_embeddings": True, "num_draft_tokens": 7}
EAGLE3_OPTIONS = {"ttt_steps": 7, "ttt_decay": 0.8, "num_aux_layers": None, "draft_vocab_size": None,
                  "freeze_embeddings": True, "num_draft_tokens": None}


@draftsmith.hookimpl
def draftsmith_register_drafts(registry):
    for spec in SPECS:
        registry.register(spec)


@draftsmith.hookimpl
def draftsmith_register_methods(registry):
    registry.register_method(MethodSpec(
        name="eagle1",
        summary="EAGLE-1: autoregressive feature-level draft (hidden-state regression + token CE), chain drafting",
        objective="draftsmith_eagle.objective:Eagle1Objective",
        drafter="draftsmith_eagle.drafting:EagleChainDrafter",
        layer_policy="draftsmith_eagle.registry:default_eagle1_layer_ids",
        export_formats={"native": "draftsmith_eagle.export:export_native"},
        default_options=dict(EAGLE1_OPTIONS),
    ))
    registry.register_method(MethodSpec(
        name="eagle2",
        summary="EAGLE-2: the EAGLE-1 draft with dynamic draft trees at decode time",
        drafts_from="eagle1",
        objective="draftsmith_eagle.objective:Eagle1Objective",
        drafter="draftsmith_eagle.drafting:EagleTreeDrafter",
        layer_policy="draftsmith_eagle.registry:default_eagle1_layer_ids",
        export_formats={"native": "draftsmith_eagle.export:export_native"},
        default_options=dict(EAGLE1_OPTIONS),
    ))
    registry.register_method(MethodSpec(
        name="eagle3",
        summary="EAGLE-3: fused multi-layer target features, training-time test (TTT), reduced draft vocab",
        objective="draftsmith_eagle.objective:Eagle3Objective",
        drafter="draftsmith_eagle.drafting:EagleChainDrafter",
        layer_policy="draftsmith_eagle.registry:default_aux_layer_ids",
        export_formats={"native": "draftsmith_eagle.export:export_native",
                        "vllm": "draftsmith_eagle.export:export_vllm",
                        "sglang": "draftsmith_eagle.export:export_sglang"},
        default_options=dict(EAGLE3_OPTIONS),
    ))
