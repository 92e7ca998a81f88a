"""Helpers shared by the core tests (no tests here). ``tests/`` is on pytest's ``pythonpath``, so test files
import these as ``support.<module>``; scripts run in subprocesses put ``tests/`` on ``sys.path`` themselves
(see ``support.train.launcher``), so every helper class has exactly one import path.

* ``support.cli``: the checkout's paths on a subprocess environment, the ``draftsmith`` CLI in a subprocess,
  a free local port;
* ``support.tiny``: a tiny character-level tokenizer with ChatML templates, tiny real transformers targets saved
  to a directory, deterministic chat JSONL;
* ``support.train``: the "toy" training method (draft, objective, registration), the launcher script that runs
  the CLI with it registered (subprocesses, torchrun), training configs and run-output readers;
* ``support.decode``: the "toychain" decode method (draft, drafter, objective) for decode / estimate / eval;
* ``support.fake_plugins``: fake entry points and plugin modules for plugin-loading tests.

This file imports nothing heavy: the launcher imports ``support.train`` only when a run needs the toy method.
"""

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
