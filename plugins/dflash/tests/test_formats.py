"""DFlash checkpoint formats: the key-by-key rules of each writer, the refusals, the readers of public layouts
(z-lab, speculators) and round trips through :func:`draftsmith.load_draft` for every format.

The rules come from the clients' sources (export.py / readers.py docstrings); tests/test_interop_dflash.py
proves them with the real clients.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import draftsmith
from draftsmith.errors import ConfigError, DraftsmithError
from draftsmith_dflash.export import export_native, export_speculators
from draftsmith_dflash.readers import VERIFIER_TENSORS, read_speculators, read_zlab, zlab_target_layer_ids
from draftsmith_dflash.registry import FORMATS, is_speculators_dflash, is_zlab_dflash

BODY = {"fc.weight", "hidden_norm.weight", "norm.weight"}


def _outputs(draft, ctx: int = 9) -> torch.Tensor:
    """Hidden states of one block over a random context, with the draft's own mask (causal / window)."""
    g = torch.Generator().manual_seed(0)
    cfg, bs = draft.config, draft.block_size
    noise = torch.randn(1, bs, cfg.hidden_size, generator=g)
    context = torch.randn(1, ctx, len(cfg.target_layer_ids) * cfg.hidden_size, generator=g)
    mask = draft.block_layout(torch.tensor([[ctx]]), ctx).dense_mask()
    with torch.no_grad():
        return draft(noise, torch.arange(ctx, ctx + bs)[None], context, torch.arange(ctx)[None], mask)


def _config(path) -> dict:
    return json.loads((path / "config.json").read_text())


def _names(path) -> set[str]:
    return set(load_file(str(path / "model.safetensors")))


def _write_config(path, config: dict) -> None:
    (path / "config.json").write_text(json.dumps(config))


def _public_zlab(tmp_path, draft, name: str = "zlab", **edits) -> tuple:
    """A native export turned into a public z-lab checkpoint (no draftsmith block), with ``edits`` applied."""
    out = export_native(draft, tmp_path / name)
    config = _config(out)
    config.pop("draftsmith")
    for key, value in edits.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    _write_config(out, config)
    return out, config


# -- registration and detection ------------------------------------------------------------------------------------
def test_every_format_is_registered_and_the_readable_ones_are_detected():
    names = {f.name: f for f in FORMATS}
    assert set(names) == {"native", "zlab", "vllm", "sglang", "speculators"}
    assert {n for n, f in names.items() if f.reader is not None} == {"zlab", "speculators"}
    assert names["speculators"].layer_id_convention == "input-of-layer"
    assert names["zlab"].layer_id_convention == "output-of-layer"
    registry = draftsmith.get_registry()
    assert set(registry.formats("dflash")) >= set(names)


@pytest.mark.parametrize("config, zlab, speculators", [
    ({"architectures": ["DFlashDraftModel"], "dflash_config": {}}, True, False),
    ({"architectures": ["DFlashDraftModel"], "speculators_model_type": "dflash"}, False, True),
    ({"architectures": ["DFlashSpeculator"], "speculators_model_type": "dflash"}, False, True),
    ({"architectures": ["DFlashDraftModel"], "draftsmith": {"method": "dflash"}}, False, False),  # native
    ({"speculators_model_type": "dflash", "draftsmith": {"method": "dflash"}}, False, False),
    ({"architectures": ["Qwen3DSparkModel"]}, False, False),  # DSpark
    ({"architectures": ["DSparkDraftModel"], "speculators_model_type": "dspark"}, False, False),
    ({"architectures": ["DFlash2DraftModel"]}, False, False),  # DFlash2: other tensors
    ({"architectures": ["LlamaForCausalLMEagle3"]}, False, False),
    ({"architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3"}, False, False),
    ({}, False, False),
])
def test_detectors_claim_only_their_layout_and_never_both(config, zlab, speculators):
    assert (is_zlab_dflash(config), is_speculators_dflash(config)) == (zlab, speculators)


def test_load_draft_picks_the_right_reader_for_each_export(tmp_path, dflash):
    draft = dflash.make_draft(dflash.target_config())
    registry = draftsmith.get_registry()
    public, config = _public_zlab(tmp_path, draft)
    assert registry.detect_format(config).name == "zlab"
    assert draftsmith.load_draft(public).config.draftsmith["read_from"] == "zlab"
    spec = export_speculators(draft, tmp_path / "spec", target="org/verifier")
    assert registry.detect_format(_config(spec)).name == "speculators"
    assert draftsmith.checkpoint.read_draft_metadata(spec)["format"] == "speculators"


# -- speculators: the keys speculators and vLLM read ---------------------------------------------------------------
def test_speculators_export_writes_the_keys_speculators_and_vllm_read(tmp_path, dflash):
    tc = dflash.target_config(num_layers=6)
    draft = dflash.make_draft(tc, target_layer_ids=[0, 2, 4], num_draft_layers=3, block_size=5)
    out = export_speculators(draft, tmp_path / "s", target="org/verifier")
    c = _config(out)
    assert "draftsmith" not in c  # the layout differs from native: load_draft must use the reader
    assert c["architectures"] == ["DFlashDraftModel"] and c["speculators_model_type"] == "dflash"
    assert c["aux_hidden_state_layer_ids"] == [1, 3, 5]  # in(k) = out(k) + 1; vLLM: target_layer_ids = aux − 1
    assert c["block_size"] == 5 and c["mask_token_id"] == dflash.MASK_ID
    assert c["draft_vocab_size"] == tc.vocab_size == c["transformer_layer_config"]["vocab_size"]
    assert c["sample_from_anchor"] is False  # DFlash: the anchor is the bonus token
    assert c["sliding_window_non_causal"] is True  # vLLM: dflash_config.causal = not this → bidirectional
    layer = c["transformer_layer_config"]
    assert layer["model_type"] == "qwen3" and layer["num_hidden_layers"] == 3
    assert layer["layer_types"] == ["full_attention"] * 3 and layer["sliding_window"] is None
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                "rms_norm_eps", "rope_parameters", "attention_bias"):
        assert layer[key] == getattr(draft.config, key), key
    sc = c["speculators_config"]
    assert sc["algorithm"] == "dflash" and sc["default_proposal_method"] == "greedy"
    assert sc["proposal_methods"] == [{"proposal_type": "greedy", "speculative_tokens": 4}]
    assert sc["verifier"] == {"name_or_path": "org/verifier", "architectures": ["Qwen3ForCausalLM"]}
    kept = c["draftsmith_export"]
    assert kept["target_layer_ids"] == [0, 2, 4] and kept["engine_layer_ids"] == [1, 3, 5]
    names = _names(out)
    assert BODY <= names and all(n in BODY or n.startswith(("layers.0.", "layers.1.", "layers.2.")) for n in names)
    assert not names & {"embed_tokens.weight", "lm_head.weight", "d2t", "t2d", *VERIFIER_TENSORS}


def test_speculators_verifier_comes_from_target_or_the_draft_block(tmp_path, dflash):
    draft = dflash.make_draft(dflash.target_config())
    with pytest.raises(ConfigError, match="--target"):
        export_speculators(draft, tmp_path / "a")
    draft.config.draftsmith["target_name_or_path"] = "/models/target"
    out = export_speculators(draft, tmp_path / "b")
    assert _config(out)["speculators_config"]["verifier"]["name_or_path"] == "/models/target"
    out = export_speculators(draft, tmp_path / "c", target="org/other")
    assert _config(out)["speculators_config"]["verifier"]["name_or_path"] == "org/other"


@pytest.mark.parametrize("options, match", [
    ({"causal": True}, "causal DFlash draft"),
    ({"sliding_window": 8}, "sliding-window"),
    ({"target_layer_ids": [1, 3]}, "cannot serve target layer 3"),  # the last layer of a 4-layer target
])
def test_speculators_refuses_what_it_cannot_hold(tmp_path, dflash, options, match):
    draft = dflash.make_draft(dflash.target_config(), **options)
    with pytest.raises(ConfigError, match=match):
        export_speculators(draft, tmp_path / "x", target="org/verifier")
    assert not (tmp_path / "x" / "model.safetensors").exists()


def test_speculators_refuses_partial_rotary_mlp_bias_and_unknown_options(tmp_path, dflash):
    draft = dflash.make_draft(dflash.target_config())
    with pytest.raises(ConfigError, match="only the option 'target'"):
        export_speculators(draft, tmp_path / "o", target="t", dtype="bfloat16")
    draft.config.mlp_bias = True
    with pytest.raises(ConfigError, match="MLP biases"):
        export_speculators(draft, tmp_path / "m", target="t")
    draft.config.mlp_bias = False
    draft.config.partial_rotary_factor = 0.5
    with pytest.raises(ConfigError, match="rotate the whole head: this draft rotates 8 of its 16"):
        export_speculators(draft, tmp_path / "p", target="t")


# -- round trips: read(write(d)) reproduces d -----------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["native", "zlab", "vllm", "sglang", "speculators"])
def test_every_format_round_trips_through_load_draft(tmp_path, dflash, fmt):
    draft = dflash.make_draft(dflash.target_config(num_layers=6), target_layer_ids=[-1, 2, 4]).eval()
    writer = draftsmith.get_registry().get_format("dflash", fmt).load_writer()
    out = writer(draft, tmp_path / fmt, **({"target": "org/verifier"} if fmt == "speculators" else {}))
    read = draftsmith.load_draft(out)
    assert type(read) is type(draft) and read.config.target_layer_ids == [-1, 2, 4]
    assert (read.block_size, read.mask_token_id) == (draft.block_size, draft.mask_token_id)
    assert read.config.draftsmith["target_num_hidden_layers"] == 6
    assert read.dtype == torch.float32
    torch.testing.assert_close(_outputs(read), _outputs(draft), rtol=0, atol=0)
    again = export_native(read, tmp_path / f"{fmt}-again")  # and what was read exports again
    assert _names(again) == _names(export_native(draft, tmp_path / f"{fmt}-ref"))


@pytest.mark.parametrize("options", [{"causal": True}, {"sliding_window": 6}, {"causal": True, "sliding_window": 6}])
def test_zlab_reader_keeps_causality_and_window(tmp_path, dflash, options):
    draft = dflash.make_draft(dflash.target_config(), **options).eval()
    out, _ = _public_zlab(tmp_path, draft)
    read = draftsmith.load_draft(out)
    assert read.config.draftsmith["read_from"] == "zlab"
    assert read.config.causal == draft.config.causal
    assert read.config.draft_sliding_window == draft.config.draft_sliding_window
    torch.testing.assert_close(_outputs(read), _outputs(draft), rtol=0, atol=0)


def test_speculators_reader_drops_the_verifier_copies_speculators_saves(tmp_path, dflash):
    draft = dflash.make_draft(dflash.target_config()).eval()
    out = export_speculators(draft, tmp_path / "s", target="org/verifier")
    state = load_file(str(out / "model.safetensors"))
    hidden, vocab = draft.config.hidden_size, draft.config.vocab_size
    state.update({"embed_tokens.weight": torch.randn(vocab, hidden), "lm_head.weight": torch.randn(vocab, hidden),
                  "verifier_lm_head.weight": torch.randn(vocab, hidden), "verifier_norm.weight": torch.ones(hidden)})
    save_file(state, str(out / "model.safetensors"))
    read = read_speculators(out, _config(out))
    assert read.config.draftsmith["target_name_or_path"] == "org/verifier"
    torch.testing.assert_close(_outputs(read), _outputs(draft), rtol=0, atol=0)


def test_speculators_reader_takes_the_verifier_depth_from_a_local_verifier(tmp_path, dflash):
    draft = dflash.make_draft(dflash.target_config())
    verifier = tmp_path / "verifier"
    verifier.mkdir()
    _write_config(verifier, {"num_hidden_layers": 4, "model_type": "qwen3"})
    out = export_speculators(draft, tmp_path / "s", target=str(verifier))
    config = _config(out)
    config.pop("draftsmith_export")  # as speculators' own save would leave it
    _write_config(out, config)
    assert read_speculators(out, config).config.draftsmith["target_num_hidden_layers"] == 4


# -- z-lab reader: public checkpoints -----------------------------------------------------------------------------
def test_zlab_reader_reads_zlab_defaults(tmp_path, dflash):
    """Top-level block_size / mask_token_id (older checkpoints) and z-lab's default ids when none are recorded."""
    tc = dflash.target_config(num_layers=8)
    draft = dflash.make_draft(tc, target_layer_ids=zlab_target_layer_ids(8, 2)).eval()
    out, config = _public_zlab(tmp_path, draft, dflash_config={}, mask_token_id=dflash.MASK_ID, is_causal=None)
    assert config["block_size"] == 4 and "target_layer_ids" not in config["dflash_config"]
    read = read_zlab(out, config)
    assert read.config.target_layer_ids == [1, 5] and read.block_size == 4 and read.mask_token_id == dflash.MASK_ID
    assert read.config.draftsmith["target_num_hidden_layers"] == 8
    torch.testing.assert_close(_outputs(read), _outputs(draft), rtol=0, atol=0)


def test_zlab_default_ids_are_zlabs_rule():
    assert zlab_target_layer_ids(36, 5) == [1, 9, 17, 25, 33]
    assert zlab_target_layer_ids(28, 5) == [1, 7, 13, 19, 25]
    assert zlab_target_layer_ids(36, 1) == [18]


def test_zlab_reader_derives_causality_from_layer_types_without_is_causal(tmp_path, dflash):
    """z-lab: no is_causal → sliding layers run causally (dflash/model.py); a bidirectional sliding draft written
    without is_causal would be read as causal, as z-lab runs it."""
    draft = dflash.make_draft(dflash.target_config(), sliding_window=6, causal=True).eval()
    out, config = _public_zlab(tmp_path, draft, is_causal=None, dflash_config={
        k: v for k, v in _config(export_native(draft, tmp_path / "n"))["dflash_config"].items() if k != "causal"})
    read = read_zlab(out, config)
    assert read.config.causal is True
    torch.testing.assert_close(_outputs(read), _outputs(draft), rtol=0, atol=0)


@pytest.mark.parametrize("edit, match", [
    ({"is_causal": True, "dflash_config": {"mask_token_id": 127, "target_layer_ids": [1, 2], "causal": False}},
     "disagree"),
    ({"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 8, "use_sliding_window": True},
     "mixed layer types"),
    ({"layer_types": ["sliding_attention"] * 2, "sliding_window": 2, "use_sliding_window": True}, "sliding_window 2"),
    ({"dflash_config": {"target_layer_ids": [1, 2]}}, "mask"),
    ({"dflash_config": {"mask_token_id": 127}, "num_target_layers": None}, "neither"),
])
def test_zlab_reader_refuses_what_our_draft_cannot_reproduce(tmp_path, dflash, edit, match):
    draft = dflash.make_draft(dflash.target_config())
    out, config = _public_zlab(tmp_path, draft, **edit)
    with pytest.raises(DraftsmithError, match=match):
        read_zlab(out, config)


@pytest.mark.parametrize("change", ["extra", "missing", "shape"])
def test_readers_are_strict_about_tensors(tmp_path, dflash, change):
    draft = dflash.make_draft(dflash.target_config())
    out, config = _public_zlab(tmp_path, draft)
    state = load_file(str(out / "model.safetensors"))
    if change == "extra":
        state["layers.0.self_attn.g_proj.weight"] = torch.zeros(4, 4)
    elif change == "missing":
        state.pop("hidden_norm.weight")
    else:
        state["fc.weight"] = state["fc.weight"][:, :-1].contiguous()
    save_file(state, str(out / "model.safetensors"))
    with pytest.raises(DraftsmithError, match="missing|unexpected|shapes"):
        read_zlab(out, config)


# -- speculators reader refusals ----------------------------------------------------------------------------------
@pytest.mark.parametrize("edit, match", [
    (lambda c: c.update(draft_vocab_size=64), "reduced draft vocabulary"),
    (lambda c: c.update(sample_from_anchor=True), "sample_from_anchor"),
    (lambda c: c["transformer_layer_config"].update(layer_types=["sliding_attention"] * 2, sliding_window=8,
                                                   use_sliding_window=True), "sliding-window"),
    (lambda c: c.pop("aux_hidden_state_layer_ids"), "aux_hidden_state_layer_ids"),
    (lambda c: c.pop("transformer_layer_config"), "transformer_layer_config"),
])
def test_speculators_reader_refuses_what_our_draft_cannot_reproduce(tmp_path, dflash, edit, match):
    draft = dflash.make_draft(dflash.target_config())
    out = export_speculators(draft, tmp_path / "s", target="org/verifier")
    config = _config(out)
    edit(config)
    with pytest.raises(DraftsmithError, match=match):
        read_speculators(out, config)
