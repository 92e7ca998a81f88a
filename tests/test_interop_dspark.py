"""DSpark drafts trained by ``draftsmith train`` and exported by ``draftsmith export`` load in the real clients,
and the clients' own forward reproduces our block logits and confidence logits (fp32).

* ``speculators`` → speculators 0.9.0 (``DSparkDraftModel.from_pretrained`` + its training forward);
* ``sglang`` → SpecForge 0.2.0 (``DSparkDraftModel.from_pretrained`` + ``OnlineDSparkModel.forward``), the
  SGLang layout;
* ``vllm`` has no CPU client: its rules are encoded key by key in ``plugins/dspark/tests/test_formats.py``;
  here the CLI export of the trained draft passes check-export and reads back to the same outputs, and a
  non-vanilla Markov head is refused.

Each client runs in its own environment (``$DRAFTSMITH_INTEROP_ENVS``, default ``.interop/``) through a script in
``tests/interop/``; a missing environment is a failure, not a skip. Anchors: each client samples them at random,
so the loss mask leaves exactly as many candidates as anchors asked for and the client keeps them all (the
script reports them; they are checked, then our draft runs the same blocks).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import draftsmith

from support.cli import run_cli, subprocess_env
from support.interop import run_client_script
from support.tiny import make_chat_data, make_target
from support.train import run_train, toy_config

NUM_TARGET_LAYERS = 6
LAYER_IDS = [0, 2, 4]  # out(k); the default spread would end on the last layer, which no engine captures
MASK_ID = 3  # <|mask|> of the tiny tokenizer
DRAFTS = {"vanilla": {}, "gated": {"markov_head_type": "gated"}}
# format -> (environment, script, the ids the client must report given ours, first/last supervised position)
CLIENTS = {"speculators": ("speculators-0.9.0", "speculators_dspark.py", lambda ids: [i + 1 for i in ids]),
           "sglang": ("specforge-0.2.0", "specforge_dspark.py", lambda ids: list(ids))}
SEQ, SUPERVISED = 20, (4, 12)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Each draft of DRAFTS trained 3 steps by the trainer on a tiny Qwen3 target (6 layers)."""
    root = tmp_path_factory.mktemp("interop-dspark")
    target = make_target(root / "target", "qwen3", num_layers=NUM_TARGET_LAYERS)
    data = make_chat_data(root / "d.jsonl", n=12)
    drafts = {}
    for name, extra in DRAFTS.items():
        options = {"mask_token_id": MASK_ID, "num_draft_layers": 2, "block_size": 4, "markov_rank": 8,
                   "target_layer_ids": LAYER_IDS, **extra}
        cfg = toy_config(root / name, target, data, method="dspark", draft=options,
                         method_options={"num_anchors": 8}, **{"train.max_steps": 3, "data.seq_len": 64})
        drafts[name] = run_train(cfg).final_dir
    return {"root": root, "target": target, "drafts": drafts}


def _export(trained, name: str, fmt: str) -> tuple[Path, subprocess.CompletedProcess]:
    out = trained["root"] / f"{name}-{fmt}"
    res = run_cli(["export", "--draft", str(trained["drafts"][name]), "--format", fmt, "--out", str(out)],
                  env=subprocess_env())
    return out, res


def _expected_anchors(fmt: str, block_size: int) -> list[int]:
    """Every candidate the client's sampler admits under the loss mask: speculators (``select_anchors``) takes
    supervised positions before the last block, SpecForge (``_sample_anchor_positions``) positions whose next
    token is supervised too."""
    lo, hi = SUPERVISED
    if fmt == "speculators":
        return [t for t in range(lo, hi) if t < SEQ - block_size]
    return [t for t in range(lo, hi - 1)]


def _inputs(draft, fmt: str, path: Path) -> list[int]:
    cfg, g = draft.config, torch.Generator().manual_seed(0)
    anchors = _expected_anchors(fmt, cfg.block_size)
    mask = torch.zeros(1, SEQ)
    mask[0, SUPERVISED[0]:SUPERVISED[1]] = 1
    save_file({"ids": torch.randint(5, cfg.vocab_size, (1, SEQ), generator=g),
               "hidden": torch.randn(1, SEQ, len(cfg.target_layer_ids) * cfg.hidden_size, generator=g),
               "verifier_last": torch.randn(1, SEQ, cfg.hidden_size, generator=g), "loss_mask": mask,
               "num_anchors": torch.tensor([len(anchors)])}, str(path))
    return anchors


def _ours(draft, inputs: Path, anchors: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Our Markov-adjusted block logits (A·γ, V) and confidence logits (A·γ,) at ``anchors``."""
    from safetensors.torch import load_file

    t = load_file(str(inputs))
    with torch.no_grad():
        out = draft.forward_hidden(t["ids"], t["hidden"], t["loss_mask"], anchors=torch.tensor([anchors]))
        logits = draft.compute_logits(out.hidden, out.markov_features)
    return logits.reshape(-1, logits.shape[-1]), out.confidence_pred.reshape(-1)


def _run_client(fmt: str, out: Path, target: Path, inputs: Path, report: Path) -> dict:
    env_name, script, _ = CLIENTS[fmt]
    args = [out, target, inputs, report] if fmt == "sglang" else [out, inputs, report]
    return run_client_script(env_name, script, args, report)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DRAFTS))
@pytest.mark.parametrize("fmt", list(CLIENTS))
def test_export_loads_strictly_in_the_real_client_and_matches_our_block(trained, name, fmt):
    root = trained["root"]
    out, res = _export(trained, name, fmt)
    assert res.returncode == 0, res.stderr[-2000:]
    draft = draftsmith.load_draft(trained["drafts"][name]).float().eval()
    inputs = root / f"{name}-{fmt}-inputs.safetensors"
    anchors = _inputs(draft, fmt, inputs)
    report = _run_client(fmt, out, trained["target"], inputs, root / f"{name}-{fmt}-report.json")
    assert report["missing"] == [] and report["unexpected"] == [], report
    assert report["warnings"] == [] and report["non_finite"] == [], report
    ids_key = "aux_layer_ids" if fmt == "speculators" else "target_layer_ids"
    assert report[ids_key] == CLIENTS[fmt][2](LAYER_IDS)  # the layers the client captures are ours
    assert report["markov_head_type"] == draft.config.markov_head_type
    assert report["anchors"] == anchors
    logits, confidence = _ours(draft, inputs, anchors)
    theirs = torch.tensor(report["logits"])
    assert theirs.shape == logits.shape and float(logits.std()) > 0
    torch.testing.assert_close(theirs, logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.tensor(report["confidence"]), confidence, rtol=1e-4, atol=1e-4)
    # and the export reads back into our draft with the same outputs
    back = draftsmith.load_draft(out).float().eval()
    for ours, again in zip((logits, confidence), _ours(back, inputs, anchors)):
        torch.testing.assert_close(again, ours, rtol=0, atol=0)


@pytest.mark.slow
def test_vllm_export_of_a_trained_draft_passes_check_export_and_reads_back(trained):
    out, res = _export(trained, "vanilla", "vllm")
    assert res.returncode == 0, res.stderr[-2000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen3DSparkModel"] and cfg["target_layer_ids"] == LAYER_IDS
    assert cfg["sample_from_anchor"] is True and cfg["dspark_bonus_anchor"] is False and "draftsmith" not in cfg
    # check-export's generic DSpark rules (ids capturable on the target, embedding copied from it, finite and
    # trained tensors); its per-engine table does not list DSpark yet (a core change, see docs/formats.md)
    check = run_cli(["check-export", str(out), "--target", str(trained["target"])], env=subprocess_env())
    assert check.returncode == 0, check.stdout + check.stderr
    draft = draftsmith.load_draft(trained["drafts"]["vanilla"]).float().eval()
    back = draftsmith.load_draft(out).float().eval()
    inputs = trained["root"] / "vllm-inputs.safetensors"
    anchors = _inputs(draft, "speculators", inputs)
    for ours, again in zip(_ours(draft, inputs, anchors), _ours(back, inputs, anchors)):
        torch.testing.assert_close(again, ours, rtol=0, atol=0)


@pytest.mark.slow
def test_vllm_export_refuses_a_markov_head_vllm_does_not_serve(trained):
    out, res = _export(trained, "gated", "vllm")
    assert res.returncode != 0
    assert "vanilla" in res.stderr and "gated" in res.stderr and "--format sglang or speculators" in res.stderr
    assert not (out / "config.json").exists()
