"""Hook implementations of the template plugin (its entry point). Keep this module light: no torch import here.

The layout is the first-party plugins' skeleton: ``plugin.py`` (hooks), ``registry.py`` (draft specs and the
option tables, torch-free), ``config.py`` (draft config), ``draft_<name>.py`` (the model), ``objective.py`` +
``loss.py`` (training), ``drafting.py`` (decoding), ``export.py`` (formats); ``tracker_csv.py`` shows that an
experiment tracker is a plugin too.
"""

from __future__ import annotations

import draftsmith
from draftsmith import FormatSpec, MethodSpec, TrackerSpec

from .registry import DRAFT_OPTIONS, DRAFTER_OPTIONS, OBJECTIVE_OPTIONS, SPECS


@draftsmith.hookimpl
def draftsmith_register_drafts(registry):
    for spec in SPECS:
        registry.register(spec)


@draftsmith.hookimpl
def draftsmith_register_methods(registry):
    registry.register_method(MethodSpec(
        name="medusa",
        summary="Medusa-style heads: head k predicts the token k+1 steps past the target's next token",
        objective="draftsmith_example_plugin.objective:MedusaObjective",
        drafter="draftsmith_example_plugin.drafting:MedusaDrafter",
        export_formats={"native": "draftsmith_example_plugin.export:export_native"},
        draft_options=DRAFT_OPTIONS, objective_options=OBJECTIVE_OPTIONS, drafter_options=DRAFTER_OPTIONS,
    ))


@draftsmith.hookimpl
def draftsmith_register_formats(registry):
    registry.register_format(FormatSpec(
        "medusa", "heads", writer="draftsmith_example_plugin.export:export_heads",
        reader="draftsmith_example_plugin.export:read_heads",
        detect="draftsmith_example_plugin.export:is_heads_layout", clients=("an engine reading bare heads",),
        summary="heads.{k}.weight/bias + a small config.json, no draftsmith metadata"))


@draftsmith.hookimpl
def draftsmith_register_trackers(registry):
    registry.register_tracker(TrackerSpec(
        "csv", "draftsmith_example_plugin.tracker_csv:CsvTracker", options={"file": "scalars.csv"},
        summary="every scalar as a CSV row (step, split, name, value) in the run directory"))
