"""EAGLE-3 layouts read back: read(write(d)) reproduces d for every format, public layouts without our
metadata are read, and what our head cannot reproduce is refused with one line."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.testing import assert_close

import draftsmith
from draftsmith.checkpoint import read_draft_metadata
from draftsmith.errors import ConfigError, DraftsmithError
from draftsmith.testing import edit_config_json as _rewrite
from draftsmith_eagle.export import export_sglang, export_speculators, export_vllm

WRITERS = {"vllm": export_vllm, "sglang": export_sglang, "speculators": export_speculators}
DRAFTS = {"one_layer_full_vocab": {"draft_vocab_size": 128, "target_layer_ids": [-1, 2, 5]},
          "two_layers_reduced_vocab": {"num_hidden_layers": 2, "draft_vocab_size": 48},
          "eagle31_two_fused": {"fc_norm": True, "norm_output": True, "target_layer_ids": [1, 4]}}
HOLDS = {"sglang": {"one_layer_full_vocab"}}  # the sglang format refuses the others (test_checkpoint_export.py)


def _logits(draft, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = draft.config
    ids = torch.randint(0, cfg.vocab_size, (1, 9), generator=g)
    aux = torch.randn(1, 9, cfg.num_aux_hidden_states * cfg.target_hidden_size, generator=g)
    with torch.no_grad():
        return draft.compute_logits(draft(ids, draft.project_hidden_states(aux)))


def _export(draft, fmt, out):
    WRITERS[fmt](draft, out, **({"target": "org/verifier"} if fmt == "speculators" else {}))
    return out


@pytest.mark.parametrize("name", DRAFTS)
@pytest.mark.parametrize("fmt", WRITERS)
def test_read_of_write_reproduces_the_draft(eagle, tmp_path, name, fmt):
    if name not in HOLDS.get(fmt, DRAFTS):
        pytest.raises(ConfigError, WRITERS[fmt], eagle.make_eagle3(eagle.target_config(), **DRAFTS[name]),
                      tmp_path / "x")
        return
    draft = eagle.make_eagle3(eagle.target_config(rope_theta=1e6), **DRAFTS[name]).eval()
    if draft.compresses_vocab:  # a real (permuted) mapping, not the placeholder
        vd = draft.config.draft_vocab_size
        draft.set_vocab_mapping(torch.randperm(128, generator=torch.Generator().manual_seed(0))[:vd])
    out = _export(draft, fmt, tmp_path / fmt)
    block = read_draft_metadata(out)
    assert (block["method"], block["format"], block["target_num_hidden_layers"]) == ("eagle3", fmt, 8)
    read = draftsmith.load_draft(out)
    assert type(read) is type(draft) and read.config.target_layer_ids == draft.config.target_layer_ids
    ours, theirs = draft.state_dict(), read.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert_close(_logits(read), _logits(draft), rtol=0, atol=0)
    assert read.config.rope_parameters["rope_theta"] == 1e6


def test_public_sglang_checkpoint_without_our_metadata_is_read(eagle, tmp_path):
    """A SpecForge-style directory: our sglang export with the draftsmith block removed (as SpecForge saves)."""
    draft = eagle.make_eagle3(eagle.target_config(), **DRAFTS["one_layer_full_vocab"]).eval()
    out = export_sglang(draft, tmp_path / "s")
    cfg = json.loads((out / "config.json").read_text())
    del cfg["draftsmith_export"]
    cfg["norm_output"] = True  # SpecForge's own key (its default): the standard final norm
    (out / "config.json").write_text(json.dumps(cfg))
    read = draftsmith.load_draft(out)
    assert read.config.draftsmith["target_num_hidden_layers"] is None  # unknown: not guessed
    assert_close(_logits(read), _logits(draft), rtol=0, atol=0)


def test_what_our_head_cannot_reproduce_is_refused(eagle, tmp_path):
    draft = eagle.make_eagle3(eagle.target_config(), **DRAFTS["one_layer_full_vocab"]).eval()
    out = export_speculators(draft, tmp_path / "spec", target="org/verifier")
    _rewrite(out, norm_before_residual=None)  # speculators' default when absent: true
    with pytest.raises(ConfigError, match="norm_before_residual"):
        draftsmith.load_draft(out)
    _rewrite(out, norm_before_residual=False, norm_before_fc=True)
    with pytest.raises(ConfigError, match="norm_before_fc"):
        draftsmith.load_draft(out)
    out = export_sglang(draft, tmp_path / "sg")
    _rewrite(out, norm_output=False)  # SpecForge: skip the final norm
    with pytest.raises(ConfigError, match="norm_output"):
        draftsmith.load_draft(out)
    _rewrite(out, norm_output=None, eagle_config={})
    with pytest.raises(ConfigError, match="does not record the target layers"):
        draftsmith.load_draft(out)
    out = export_vllm(draft, tmp_path / "v")
    state = load_file(str(out / "model.safetensors"))
    save_file({k: v for k, v in state.items() if k != "embed_tokens.weight"}, str(out / "model.safetensors"))
    with pytest.raises(ConfigError, match="embed_tokens"):
        draftsmith.load_draft(out)
    save_file({**state, "layers.0.extra.weight": torch.ones(2)}, str(out / "model.safetensors"))
    with pytest.raises(DraftsmithError, match="unexpected"):
        draftsmith.load_draft(out)


def test_full_vocab_maps_must_be_the_identity(eagle, tmp_path):
    draft = eagle.make_eagle3(eagle.target_config(), **DRAFTS["one_layer_full_vocab"]).eval()
    out = export_sglang(draft, tmp_path / "sg")
    state = load_file(str(out / "model.safetensors"))
    state["d2t"] = torch.arange(128) % 3
    save_file(state, str(out / "model.safetensors"))
    with pytest.raises(ConfigError, match="permutes"):
        draftsmith.load_draft(out)


def test_an_unknown_layout_names_the_readable_formats(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["SomethingElse"]}))
    save_file({"w": torch.ones(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(DraftsmithError, match=r"readable formats: .*eagle3/speculators"):
        draftsmith.load_draft(tmp_path)


@pytest.mark.parametrize("fmt", ["vllm", "sglang"])
def test_eagle1_engine_formats_are_refused_with_the_reason(eagle, tmp_path, fmt):
    from draftsmith.checkpoint import save_draft

    spec = draftsmith.get_registry().get_format("eagle2", fmt)  # eagle2 shares eagle1's formats
    assert spec.writer is None and spec.reader is None and "input_layernorm and no final norm" in spec.refusal
    with pytest.raises(ConfigError, match="input_layernorm and no final norm"):
        spec.load_writer()
    save_draft(eagle.make_eagle1(eagle.target_config()), tmp_path / "e1")
    from support.cli import run_cli, subprocess_env

    res = run_cli(["export", "--draft", str(tmp_path / "e1"), "--format", fmt, "--out", str(tmp_path / fmt)],
                  env=subprocess_env())
    assert res.returncode != 0 and "no serving engine can run this EAGLE-1 head" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / fmt).exists()
    listing = run_cli(["plugins"], env=subprocess_env()).stdout
    assert "eagle1: native (w), nemo (r), sglang (refused), vllm (refused)" in listing
    assert "eagle3: native (w), sglang (wr), speculators (wr), vllm (wr)" in listing



@pytest.mark.parametrize("fc_bias", [False, True])
def test_nemo_eagle1_save_without_our_metadata_is_read(eagle, tmp_path, fc_bias):
    """NeMo AutoModel saves the same EAGLE-1 layout without a draftsmith block: read it, outputs identical."""
    draft = eagle.make_eagle1(eagle.target_config(), draft_num_hidden_layers=2, fc_bias=fc_bias).eval()
    draft.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["draftsmith"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert read_draft_metadata(tmp_path)["format"] == "nemo"
    read = draftsmith.load_draft(tmp_path)
    ours, theirs = draft.state_dict(), read.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    ids, feats = torch.randint(0, 128, (1, 7)), torch.randn(1, 7, 64)
    with torch.no_grad():
        assert_close(read(ids, feats), draft(ids, feats), rtol=0, atol=0)
    with pytest.raises(ConfigError, match="read but not written|no .?nemo.? format|read-only"):
        draftsmith.get_registry().get_format("eagle1", "nemo").load_writer()
