"""The DFlash plugin's hook implementations (the `draftsmith` entry point; torch-free)."""

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
        name="dflash",
        summary="DFlash: one-pass block drafting with target context injected as keys/values",
        objective="draftsmith_dflash.objective:DFlashObjective",
        drafter="draftsmith_dflash.drafting:DFlashDrafter",
        layer_policy="draftsmith_dflash.registry:build_target_layer_ids",
        draft_options=DRAFT_OPTIONS, objective_options=OBJECTIVE_OPTIONS, drafter_options=DRAFTER_OPTIONS,
    ))


@draftsmith.hookimpl
def draftsmith_register_formats(registry):
    for fmt in FORMATS:
        registry.register_format(fmt)
