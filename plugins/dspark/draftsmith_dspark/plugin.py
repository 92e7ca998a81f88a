"""The DSpark plugin's hook implementations (the `draftsmith` entry point; torch-free)."""

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
        name="dspark",
        summary="DSpark: parallel block draft + Markov head (exact softmax) + confidence head",
        objective="draftsmith_dspark.objective:DSparkObjective",
        drafter="draftsmith_dspark.drafting:DSparkDrafter",
        layer_policy="draftsmith_dspark.registry:build_target_layer_ids",
        export_formats={"native": "draftsmith_dspark.export:export_native"},
        default_options={"block_size": 7, "num_draft_layers": 5, "num_anchors": 512, "loss_decay_gamma": 4.0,
                         "markov_rank": 256, "markov_head_type": "vanilla"},
    ))
