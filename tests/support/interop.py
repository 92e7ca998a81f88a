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


# -- the inputs the client scripts read, and our own outputs on them ------------------------------------------
def eagle3_inputs(draft, inputs: Path):
    """Random ids (1, 12) and captured features for an EAGLE-3 ``draft``, saved to ``inputs`` (what the
    ``*_eagle3.py`` scripts read); our first-step logits on them (draft vocab)."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    cfg = draft.config
    ids = torch.randint(3, cfg.vocab_size, (1, 12), generator=g)
    aux = torch.randn(1, 12, cfg.num_aux_hidden_states * cfg.target_hidden_size, generator=g)
    save_file({"ids": ids, "aux": aux}, str(inputs))
    return eagle3_logits(draft, inputs)


def eagle3_logits(draft, inputs: Path):
    """An EAGLE-3 draft's first-step logits on the inputs :func:`eagle3_inputs` saved."""
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(inputs))
    ids, aux = tensors["ids"], tensors["aux"]
    with torch.no_grad():
        hidden = draft(input_ids=ids, projected_hidden_states=draft.project_hidden_states(aux),
                       position_ids=torch.arange(ids.shape[1])[None])
        return draft.compute_logits(hidden)[0]


def dflash_block_inputs(draft, inputs: Path, context_len: int = 10):
    """One block of noise embeddings over ``context_len`` positions of captured features for a DFlash ``draft``,
    saved to ``inputs`` (what ``zlab_dflash.py`` reads); our final-normed block hidden states on them."""
    import torch
    from safetensors.torch import save_file

    cfg, g = draft.config, torch.Generator().manual_seed(0)
    ctx, bs = context_len, cfg.block_size
    noise = torch.randn(1, bs, cfg.hidden_size, generator=g)
    context = torch.randn(1, ctx, len(cfg.target_layer_ids) * cfg.hidden_size, generator=g)
    with torch.no_grad():
        ours = draft(noise, torch.arange(ctx, ctx + bs)[None], context, torch.arange(ctx)[None], None)[0]
    save_file({"noise": noise, "context": context, "positions": torch.arange(ctx + bs)[None]}, str(inputs))
    return ours
