"""Drafts trained by ``draftsmith train`` and exported by ``draftsmith export`` load in the real clients and the
clients' own forward reproduces our logits (fp32).

Each client runs in its own environment (``scripts/install_interop.sh`` builds them from ``interop/*.txt``;
``$DRAFTSMITH_INTEROP_ENVS``, default ``.interop/``), through a small script in ``tests/interop/`` that loads the
directory with the client's own loader and reports missing / unexpected tensors, weight warnings, the layer ids
it will capture and its logits. A missing environment is a failure, not a skip: CI builds them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import draftsmith

from support.cli import run_cli, subprocess_env
from support.interop import dflash_block_inputs, eagle3_inputs, eagle3_logits, run_client_script
from support.tiny import make_chat_data, make_target
from support.train import run_train, toy_config

CLIENTS = {"speculators": ("speculators-0.9.0", "speculators_eagle3.py"),
           "specforge": ("specforge-0.2.0", "specforge_eagle3.py"),
           "zlab": ("zlab-dflash-0.1.0", "zlab_dflash.py")}
# (name, draft options): one fused layer over the full vocabulary; two layers over a reduced vocabulary
DRAFTS = {"one_layer_full_vocab": {}, "two_layers_reduced_vocab": {"num_hidden_layers": 2, "draft_vocab_size": 48}}
# format -> (client, the ids the client must capture given draftsmith's output-of-layer ids)
FORMATS = {"speculators": ("speculators", lambda ids: [i + 1 for i in ids]),
           "sglang": ("specforge", lambda ids: list(ids))}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Each draft of DRAFTS trained 3 steps by the trainer on a tiny Llama target (8 layers)."""
    root = tmp_path_factory.mktemp("interop")
    target = make_target(root / "target", "llama", num_layers=8)
    data = make_chat_data(root / "d.jsonl", n=12)
    out = {}
    for name, options in DRAFTS.items():
        cfg = toy_config(root / name, target, data, method="eagle3", draft=options,
                         method_options={"ttt_steps": 2}, **{"train.max_steps": 3, "data.seq_len": 64})
        out[name] = run_train(cfg).final_dir
    cfg = toy_config(root / "dflash", target, data, method="dflash",
                     draft={"mask_token_id": 3, "num_draft_layers": 2, "block_size": 4},
                     method_options={"num_anchors": 8}, **{"train.max_steps": 3, "data.seq_len": 64})
    out["dflash"] = run_train(cfg).final_dir
    return {"root": root, "drafts": out, "target": target}


def _formats_for(name: str) -> list[str]:
    return ["speculators", "sglang"] if name == "one_layer_full_vocab" else ["speculators"]


@pytest.mark.slow
@pytest.mark.parametrize("name, fmt", [(n, f) for n in DRAFTS for f in _formats_for(n)])
def test_export_loads_strictly_in_the_real_client_and_matches_our_logits(trained, name, fmt):
    client, engine_ids = FORMATS[fmt]
    root, draft_dir = trained["root"], trained["drafts"][name]
    out = root / f"{name}-{fmt}"
    res = run_cli(["export", "--draft", str(draft_dir), "--format", fmt, "--out", str(out)], env=subprocess_env())
    assert res.returncode == 0, res.stderr[-2000:]
    inputs = root / f"{name}-{fmt}-inputs.safetensors"
    ours = eagle3_inputs(draftsmith.load_draft(draft_dir).float().eval(), inputs)
    resaved = root / f"{name}-{fmt}-saved-by-{client}"
    report = _run_client(client, out, inputs, root / f"{name}-{fmt}-report.json", resaved)
    assert report["missing"] == [] and report["unexpected"] == [], report
    assert report["warnings"] == [], report["warnings"]
    ids = json.loads((draft_dir / "config.json").read_text())["draftsmith"]["target_layer_ids"]
    assert report["aux_layer_ids"] == engine_ids(ids)  # the layers the client will capture are ours
    theirs = torch.tensor(report["logits"])
    assert theirs.shape == ours.shape
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)
    # the other way: the checkpoint the client itself saved (weights changed) reads back in draftsmith
    read = draftsmith.load_draft(resaved)
    assert read.config.target_layer_ids == ids and read.config.num_hidden_layers == DRAFTS[name].get(
        "num_hidden_layers", 1)
    torch.testing.assert_close(eagle3_logits(read, inputs), torch.tensor(report["saved_logits"]), rtol=1e-4, atol=1e-4)


def _run_client(client: str, out: Path, inputs: Path, report_file: Path, save_dir: Path | None = None) -> dict:
    extra = [save_dir] if save_dir is not None else []
    env_name, script = CLIENTS[client]
    return run_client_script(env_name, script, [out, inputs, report_file, *extra], report_file)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["native", "vllm", "sglang"])
def test_dflash_export_loads_strictly_in_zlab_and_matches_our_block(trained, fmt):
    """Every DFlash format is the z-lab layout: z-lab's own model reproduces our block hidden states."""
    root, draft_dir = trained["root"], trained["drafts"]["dflash"]
    out = root / f"dflash-{fmt}"
    res = run_cli(["export", "--draft", str(draft_dir), "--format", fmt, "--out", str(out)], env=subprocess_env())
    assert res.returncode == 0, res.stderr[-2000:]
    draft = draftsmith.load_draft(draft_dir).float().eval()
    cfg = draft.config
    inputs = root / f"dflash-{fmt}-inputs.safetensors"
    ours = dflash_block_inputs(draft, inputs)
    report = _run_client("zlab", out, inputs, root / f"dflash-{fmt}-report.json")
    assert report["missing"] == [] and report["unexpected"] == [] and report["warnings"] == [], report
    assert report["layer_ids"] == list(cfg.target_layer_ids)  # z-lab reads out(k) as is
    torch.testing.assert_close(torch.tensor(report["hidden"]), ours, rtol=1e-4, atol=1e-4)


def test_speculators_export_needs_to_know_its_verifier(tmp_path):
    from draftsmith.errors import ConfigError
    from draftsmith.testing import tiny_target_config
    from draftsmith_eagle.draft_llama import LlamaEagle3DraftModel
    from draftsmith_eagle.export import export_speculators

    tc = tiny_target_config("LlamaForCausalLM", 8)  # built from config: no path to name
    draft = LlamaEagle3DraftModel(LlamaEagle3DraftModel.build_draft_config(tc))
    with pytest.raises(ConfigError, match="--target"):
        export_speculators(draft, tmp_path / "x")
    export_speculators(draft, tmp_path / "y", target="org/verifier")
    cfg = json.loads((tmp_path / "y" / "config.json").read_text())
    assert cfg["speculators_config"]["verifier"]["name_or_path"] == "org/verifier"
    assert cfg["speculators_model_type"] == "eagle3" and cfg["norm_before_residual"] is False
    from safetensors import safe_open

    with safe_open(str(tmp_path / "y" / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    assert not {"d2t", "t2d"} & names and "layers.0.hidden_norm.weight" in names  # full vocab: no maps
