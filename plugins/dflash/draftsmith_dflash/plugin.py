"""The DFlash plugin's hook implementations (the `draftsmith` entry point; torch-free)."""

from __future__ import annotations

import draftsmith
from draftsmith import MethodSpec

from .registry import SPECS


@draftsmith.hookimpl
def draftsmith_register_drafts(registry):
    for spec in SPECS:
        registry.register(spec)


@draftsmith.hookimpl
def draftsmith_register_methods(registry):
    registry.register_method(MethodSpec(
        name="dflash",
        summary="DFlash: one-pass block drafting with target context injected as keys/values",
        objective="draftsmith_dflash.objective:DFlashObjective",
        drafter="draftsmith_dflash.drafting:DFlashDrafter",
        layer_policy="draftsmith_dflash.registry:build_target_layer_ids",
        export_formats={"native": "draftsmith_dflash.export:export_native",
                        "vllm": "draftsmith_dflash.export:export_native",
                        "sglang": "draftsmith_dflash.export:export_native"},
        # Training/decoding options. Draft-shape options (mask_token_id (required), block_size=16,
        # num_draft_layers=5, target_layer_ids, causal, sliding_window) are draft options: see
        # Qwen3DFlashDraftModel.build_draft_config and docs/methods/dflash.md.
        default_options={"num_anchors": 512, "loss_decay_gamma": 7.0, "kd_weight": 0.0, "kd_temperature": 1.0,
                         "seed": 0, "attention_backend": "grouped"},
    ))
