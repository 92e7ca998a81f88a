"""The plugin API: pluggy hook specifications of the ``draftsmith`` project.

A plugin is a module named by an entry point in the ``draftsmith`` group holding functions decorated with
``@draftsmith.hookimpl`` whose names are the hooks below. Keep that module light (no torch import at module
level): it is imported by ``draftsmith list-drafts``. Every hook is documented in ``docs/plugin-hooks.md``.
"""

from __future__ import annotations

import pluggy

PROJECT = "draftsmith"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def draftsmith_register_drafts(registry):
    """Register draft models: call ``registry.register(DraftSpec(...))`` once per spec.

    Called once per plugin when the plugin manager is first used. ``registry`` stamps each spec with the
    plugin's name, distribution and version. Register draft classes by ``"module:QualName"`` string so nothing
    heavy is imported here. A spec may serve several architectures; a third party adds an architecture to an
    existing method by registering a spec with that method name and an existing draft class. Return value
    ignored.
    """


@hookspec
def draftsmith_register_methods(registry):
    """Register methods: call ``registry.register_method(MethodSpec(...))``.

    A method names its training objective, its drafting procedure for decoding, its default target-layer
    policy, its export formats and its option defaults (see :class:`draftsmith.method.MethodSpec`); core's
    trainer, decoder and exporter reach the method only through it. ``drafts_from`` lets a method reuse
    another method's drafts (``eagle2`` uses the ``eagle1`` drafts). Return value ignored.
    """


@hookspec
def draftsmith_register_formats(registry):
    """Register checkpoint formats: call ``registry.register_format(FormatSpec(...))`` once per (method, format).

    A :class:`draftsmith.formats.FormatSpec` names the method whose drafts it holds, the ``--format`` name of
    ``draftsmith export``, a writer ``f(draft, out_dir, *, target=None) -> Path``, and for a layout that can be
    read back a reader ``f(path, config) -> draft`` and a cheap, torch-free ``detect(config) -> bool`` that
    :func:`draftsmith.load_draft` (and so ``eval --draft``, ``train --init-from``) asks when a directory carries
    no draftsmith metadata. Any plugin may add a format to any method — a new serving engine is a new format;
    writers should refuse, with one line, a draft the engine would run differently. Two plugins registering the
    same (method, format) is a conflict reported when that format is used. Return value ignored.
    """


@hookspec
def draftsmith_register_trackers(registry):
    """Register experiment trackers: call ``registry.register_tracker(TrackerSpec(...))`` once per tracker.

    A :class:`draftsmith.tracking.TrackerSpec` names the tracker (the value users put in ``train.trackers``), a
    factory ``factory(**options) -> Tracker`` given as ``"module:Name"`` so nothing heavy is imported here, the
    options it takes with their defaults (``tracker_options.<name>`` is checked against them) and the pip
    requirement named when it fails to start. The built tracker gets ``start(run)``, ``log(step, split,
    metrics)``, ``event(step, name, info)`` and ``finish(status)`` on the main rank only (see
    :class:`draftsmith.tracking.Tracker`). Core registers ``jsonl``, ``tensorboard``, ``wandb`` and ``mlflow``
    the same way. Two plugins registering the same name is a conflict raised when that tracker is selected.
    Return value ignored.
    """


@hookspec(firstresult=True)
def draftsmith_find_decoder_layers(model):
    """Return the ordered list of decoder layers of ``model`` (a loaded target), or ``None`` to pass.

    Called when draftsmith captures target hidden states and the model's layer container is not one of the
    common layouts it knows (``model.layers``, ``model.model.layers``, ``model.language_model.layers``,
    ``transformer.h``, ...). A plugin adding a new target family implements this; the first non-``None``
    result wins. Each returned layer must produce its hidden state as the output (or the first element of a
    tuple output) so that forward hooks can capture it.
    """
