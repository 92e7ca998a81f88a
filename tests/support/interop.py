"""Running the scripts of ``tests/interop/`` inside the real clients' own environments.

``scripts/install_interop.sh`` builds one venv per client under ``$DRAFTSMITH_INTEROP_ENVS`` (default
``.interop/`` in the checkout). A missing environment is a failure, not a skip: CI builds them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from support import REPO, TESTS
from support.cli import subprocess_env

ENVS = Path(os.environ.get("DRAFTSMITH_INTEROP_ENVS", REPO / ".interop"))


def client_python(env_name: str) -> Path:
    python = ENVS / env_name / "bin" / "python"
    assert python.exists(), (f"interop environment {python.parent.parent} is missing: run "
                             f"`bash scripts/install_interop.sh` (CI does)")
    return python


def run_client_script(env_name: str, script: str, args, report: Path) -> dict:
    """``tests/interop/<script> ARGS`` in the client's environment (its own packages only, offline); the JSON
    report it wrote to ``report``."""
    env = {**subprocess_env(), "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    run = subprocess.run([str(client_python(env_name)), str(TESTS / "interop" / script), *map(str, args)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(Path(report).read_text())
