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
        # objective options only (draft options — mask_token_id, block_size, markov_rank, ... — belong to the
        # draft config, see draftsmith_dspark.config.DRAFT_OPTIONS); kept in sync with loss.OBJECTIVE_DEFAULTS
        # (num_anchors: default = the draft config's, 512)
        default_options={"loss_decay_gamma": 4.0, "ce_loss_alpha": 0.1, "l1_loss_alpha": 0.9,
                         "confidence_head_alpha": 1.0, "loss_chunk_size": None, "seed": 0,
                         "attention_backend": "grouped"},
    ))
