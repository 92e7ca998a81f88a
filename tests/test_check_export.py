"""`draftsmith check-export`: each silent trap of issue 12 is reported in one line, a good export passes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from draftsmith.export_check import check_export
from draftsmith.testing import edit_config_json as _edit_config

from support.cli import run_cli, subprocess_env
from support.tiny import make_target


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from draftsmith_dflash.draft_qwen3 import Qwen3DFlashDraftModel
    from draftsmith_dflash.export import export_native as export_dflash
    from draftsmith_eagle.draft_llama import LlamaEagle3DraftModel
    from draftsmith_eagle.export import export_sglang, export_speculators, export_vllm

    root = tmp_path_factory.mktemp("check")
    target_dir = make_target(root / "target", "llama", num_layers=8)
    target = AutoModelForCausalLM.from_pretrained(target_dir)
    draft = LlamaEagle3DraftModel(LlamaEagle3DraftModel.build_draft_config(target.config))
    draft.copy_embeddings_from_target(target.get_input_embeddings())
    dirs = {"sglang": export_sglang(draft, root / "sglang"), "vllm": export_vllm(draft, root / "vllm"),
            "speculators": export_speculators(draft, root / "speculators", target=str(target_dir))}
    dflash = Qwen3DFlashDraftModel(Qwen3DFlashDraftModel.build_draft_config(target.config, mask_token_id=3,
                                                                             num_draft_layers=2))
    dirs["dflash"] = export_dflash(dflash, root / "dflash")
    return {"root": root, "target": target_dir, "dirs": dirs, "vocab": target.config.vocab_size}


def _copy(world, name: str, dest: str) -> Path:
    import shutil

    out = world["root"] / dest
    shutil.copytree(world["dirs"][name], out)
    return out


def test_good_exports_pass_for_their_engines(world):
    for name, engine in (("sglang", "specforge"), ("vllm", "vllm"), ("speculators", "speculators"),
                         ("dflash", "zlab")):
        layout, problems = check_export(world["dirs"][name], engine=engine, target=str(world["target"]))
        assert problems == [], (name, problems)
    res = run_cli(["check-export", str(world["dirs"]["vllm"]), "--engine", "vllm", "--target", str(world["target"])],
                  env=subprocess_env())
    assert res.returncode == 0 and "eagle3-vllm layout OK for vllm" in res.stdout, res.stderr


def test_specforge_traps(world):
    bad = _copy(world, "sglang", "sglang-bad")
    _edit_config(bad, norm_output=False)  # issue 12 observation 1
    state = load_file(str(bad / "model.safetensors"))
    del state["d2t"], state["t2d"]  # observation 2
    save_file(state, str(bad / "model.safetensors"))
    _, problems = check_export(bad, engine="specforge")
    assert any("norm_output: false" in p for p in problems) and any("uninitialised" in p for p in problems)
    _, problems = check_export(bad, engine="vllm")
    assert any("does not read the eagle3-sglang layout" in p for p in problems)


def test_vllm_traps(world):
    bad = _copy(world, "vllm", "vllm-bad")
    _edit_config(bad, eagle_aux_hidden_state_layer_ids=None, norm_before_residual=None)  # observation 3
    _, problems = check_export(bad, engine="vllm")
    assert any("eagle_aux_hidden_state_layer_ids is missing" in p for p in problems)
    assert any("norm_before_residual is absent" in p for p in problems)
    last = _copy(world, "vllm", "vllm-last")
    _edit_config(last, eagle_aux_hidden_state_layer_ids=[2, 4, 8])  # in(8) on an 8-layer target: observation 7
    _, problems = check_export(last, target=str(world["target"]))
    assert any("cannot be captured" in p for p in problems)


def test_speculators_and_tensor_traps(world):
    bad = _copy(world, "speculators", "spec-bad")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["speculators_config"]["verifier"]["name_or_path"] = None
    (bad / "config.json").write_text(json.dumps(cfg))
    state = load_file(str(bad / "model.safetensors"))
    state["embed_tokens.weight"] = torch.randn_like(state["embed_tokens.weight"])  # never copied (TorchSpec#38)
    state["fc.weight"] = torch.zeros_like(state["fc.weight"])
    state["lm_head.weight"][0, 0] = float("nan")
    save_file(state, str(bad / "model.safetensors"))
    _, problems = check_export(bad, target=str(world["target"]))
    text = "\n".join(problems)
    for needle in ("verifier.name_or_path is empty", "not the target's embedding", "fc.weight is constant",
                   "lm_head.weight holds NaN"):
        assert needle in text, (needle, problems)
    res = run_cli(["check-export", str(bad), "--target", str(world["target"])], env=subprocess_env())
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == len(problems)


def test_dflash_traps(world):
    bad = _copy(world, "dflash", "dflash-bad")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["dflash_config"]["mask_token_id"] = world["vocab"] + 5
    cfg["layer_types"] = ["full_attention"]
    (bad / "config.json").write_text(json.dumps(cfg))
    _, problems = check_export(bad, engine="sglang", target=str(world["target"]))
    assert any("outside the target vocab" in p for p in problems)
    assert any("layer_types" in p for p in problems)
    causal = _copy(world, "dflash", "dflash-causal")  # observation 9: SGLang reads causality from layer_types
    cfg = json.loads((causal / "config.json").read_text())
    cfg["dflash_config"]["causal"] = True
    (causal / "config.json").write_text(json.dumps(cfg))
    _, problems = check_export(causal, engine="sglang")
    assert any("causal DFlash draft with full-attention layers: SGLang would run its blocks bidirectionally" in p
               for p in problems)
    assert check_export(causal, engine="zlab")[1] == []  # z-lab reads is_causal / dflash_config.causal


@pytest.fixture(scope="module")
def dspark_dirs(world):
    from transformers import AutoModelForCausalLM

    from draftsmith_dspark.draft_qwen3 import Qwen3DSparkModel
    from draftsmith_dspark.export import export_sglang, export_speculators, export_vllm

    target = AutoModelForCausalLM.from_pretrained(world["target"])
    from draftsmith.testing import scramble

    draft = scramble(Qwen3DSparkModel(Qwen3DSparkModel.build_draft_config(  # scrambled: as if trained
        target.config, mask_token_id=3, num_draft_layers=2, target_layer_ids=[1, 5])), 0)
    draft.copy_embeddings_from_target(target.get_input_embeddings(), target.lm_head)
    root = world["root"]
    return {"vllm": export_vllm(draft, root / "dspark-vllm"), "sglang": export_sglang(draft, root / "dspark-sglang"),
            "speculators": export_speculators(draft, root / "dspark-spec", target=str(world["target"]))}


def test_dspark_exports_pass_and_their_traps_are_reported(world, dspark_dirs, tmp_path):
    import shutil

    expected = {"vllm": ("dspark", "vllm"), "sglang": ("dspark-sglang", "sglang"),
                "speculators": ("dspark-speculators", "vllm")}
    for fmt, (layout, engine) in expected.items():
        assert check_export(dspark_dirs[fmt], engine=engine, target=str(world["target"])) == (layout, []), fmt
    out = shutil.copytree(dspark_dirs["vllm"], tmp_path / "no-anchor")
    _edit_config(out, sample_from_anchor=None, dspark_bonus_anchor=None)
    problems = check_export(out, engine="vllm")[1]
    assert any("sample_from_anchor is None, expected True" in p for p in problems)  # vllm#56792
    assert any("dspark_bonus_anchor is missing" in p for p in problems)
    out = shutil.copytree(dspark_dirs["speculators"], tmp_path / "gated")
    _edit_config(out, markov_head_type="gated")
    assert check_export(out, engine="speculators")[1] == []  # speculators trains gated heads ...
    assert any("serves only 'vanilla'" in p for p in check_export(out, engine="vllm")[1])  # ... vLLM does not
    _edit_config(out, aux_hidden_state_layer_ids=[2, 8])  # in(8) on an 8-layer target
    assert any("cannot be captured" in p for p in check_export(out, target=str(world["target"]))[1])
    out = shutil.copytree(dspark_dirs["sglang"], tmp_path / "no-dspark-config")
    _edit_config(out, dspark_config=None)
    assert any("dspark_config is missing" in p for p in check_export(out, engine="sglang")[1])


def test_dflash_speculators_causality_trap(world, tmp_path):
    import shutil

    from transformers import AutoModelForCausalLM

    from draftsmith.testing import scramble
    from draftsmith_dflash.draft_qwen3 import Qwen3DFlashDraftModel
    from draftsmith_dflash.export import export_speculators

    target = AutoModelForCausalLM.from_pretrained(world["target"])
    draft = scramble(Qwen3DFlashDraftModel(Qwen3DFlashDraftModel.build_draft_config(
        target.config, mask_token_id=3, num_draft_layers=2)), 0)
    out = export_speculators(draft, tmp_path / "spec", target=str(world["target"]))
    assert check_export(out, engine="vllm", target=str(world["target"])) == ("dflash-speculators", [])
    bad = shutil.copytree(out, tmp_path / "bad")
    _edit_config(bad, sliding_window_non_causal=False)  # speculators' own default
    assert any("runs the blocks causally" in p for p in check_export(bad, engine="vllm")[1])
    _edit_config(bad, sliding_window_non_causal=True, sample_from_anchor=True)
    assert any("expected False for DFlash" in p for p in check_export(bad)[1])
