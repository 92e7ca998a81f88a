"""The DSpark plugin's hook implementations (the `draftsmith` entry point; torch-free)."""

from __future__ import annotations

import draftsmith
from draftsmith import MethodSpec

from .registry import DRAFT_OPTIONS, DRAFTER_OPTIONS, FORMATS, OBJECTIVE_OPTIONS, SPECS


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
        draft_options=DRAFT_OPTIONS, objective_options=OBJECTIVE_OPTIONS, drafter_options=DRAFTER_OPTIONS,
    ))


@draftsmith.hookimpl
def draftsmith_register_formats(registry):
    for fmt in FORMATS:
        registry.register_format(fmt)
