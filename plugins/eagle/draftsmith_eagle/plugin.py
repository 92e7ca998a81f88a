"""The EAGLE plugin's hook implementations (the `draftsmith` entry point; torch-free)."""

from __future__ import annotations

import draftsmith
from draftsmith import MethodSpec

from .registry import DRAFT_OPTIONS, DRAFTER_OPTIONS, FORMATS, OBJECTIVE_OPTIONS, SPECS


def _tables(method: str) -> dict:
    return {"draft_options": DRAFT_OPTIONS[method], "objective_options": OBJECTIVE_OPTIONS[method],
            "drafter_options": DRAFTER_OPTIONS[method]}


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
        **_tables("eagle1"),
    ))
    registry.register_method(MethodSpec(
        name="eagle2",
        summary="EAGLE-2: the EAGLE-1 draft with dynamic draft trees at decode time",
        drafts_from="eagle1",
        objective="draftsmith_eagle.objective:Eagle1Objective",
        drafter="draftsmith_eagle.drafting:EagleTreeDrafter",
        layer_policy="draftsmith_eagle.registry:default_eagle1_layer_ids",
        **_tables("eagle2"),
    ))
    registry.register_method(MethodSpec(
        name="eagle3",
        summary="EAGLE-3: fused multi-layer target features, training-time test (TTT), reduced draft vocab",
        objective="draftsmith_eagle.objective:Eagle3Objective",
        drafter="draftsmith_eagle.drafting:EagleChainDrafter",
        layer_policy="draftsmith_eagle.registry:default_aux_layer_ids",
        **_tables("eagle3"),
    ))


@draftsmith.hookimpl
def draftsmith_register_formats(registry):
    for fmt in FORMATS:
        registry.register_format(fmt)
