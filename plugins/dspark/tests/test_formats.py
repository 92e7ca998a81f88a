"""DSpark engine formats (export.py writers, readers.py readers, registry.py detectors), key by key.

The rules come from the clients' sources (see the writers' docstrings): vLLM (``Qwen3DSparkModel``, ids out(k)
read +1, ``sample_from_anchor`` / ``dspark_bonus_anchor``, vanilla Markov head only), SGLang / SpecForge
(``DSparkDraftModel``, ``dflash_config`` + ``dspark_config``, no embedding or head), speculators 0.9.0
(``dspark``, ids in(k), the verifier). ``tests/test_interop_dspark.py`` proves them with the real clients.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import draftsmith
from draftsmith.checkpoint import read_draft_metadata
from draftsmith.errors import ConfigError, DraftsmithError
from draftsmith.testing import edit_config_json as _edit

NUM_TARGET_LAYERS = 6
LAYER_IDS = [0, 2, 4]  # out(k), all capturable on a 6-layer target
FORMATS = ("vllm", "sglang", "speculators")


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory, tiny):
    """A tiny Qwen3 target saved like a checkpoint (the readers take embed_tokens / lm_head from it)."""
    path = tmp_path_factory.mktemp("dspark-target") / "target"
    tiny.make_target(tiny.target_config("Qwen3ForCausalLM", NUM_TARGET_LAYERS)).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def make(target_dir, tiny):
    """``make(**options)``: a scrambled DSpark draft on the saved target (its path recorded in the draft block),
    with the target's embedding and head copied in."""
    from transformers import AutoConfig, AutoModelForCausalLM

    target = AutoModelForCausalLM.from_pretrained(str(target_dir)).float()
    config = AutoConfig.from_pretrained(str(target_dir))

    def build(**options):
        options.setdefault("target_layer_ids", LAYER_IDS)
        options.setdefault("block_size", 4)
        draft = tiny.make_draft(config, **options)
        draft.copy_embeddings_from_target(target.get_input_embeddings(), target.get_output_embeddings())
        return draft.eval()

    return build


def _export(draft, fmt, out, **options):
    from draftsmith_dspark import export

    return getattr(export, f"export_{fmt}")(draft, out, **options)


def _config(path):
    return json.loads((path / "config.json").read_text())


def _outputs(draft, seed=0):
    """Markov-adjusted block logits (B, A, γ, V), confidence logits (B, A, γ) and block hidden states."""
    g = torch.Generator().manual_seed(seed)
    cfg = draft.config
    ids = torch.randint(4, cfg.vocab_size - 1, (2, 24), generator=g)
    hidden = torch.randn(2, 24, len(cfg.target_layer_ids) * cfg.hidden_size, generator=g)
    anchors = torch.tensor([[1, 5, 9, 14], [0, 3, 11, 17]])
    with torch.no_grad():
        out = draft.forward_hidden(ids, hidden, torch.ones(2, 24), anchors=anchors)
        logits = draft.compute_logits(out.hidden, out.markov_features)
    return logits, out.confidence_pred, out.hidden


# -- vllm --------------------------------------------------------------------------------------------------------
def test_vllm_writes_the_keys_vllm_reads_with_our_meaning(make, tmp_path):
    draft = make()
    cfg = _config(_export(draft, "vllm", tmp_path / "v"))
    assert cfg["architectures"] == ["Qwen3DSparkModel"]
    assert cfg["target_layer_ids"] == LAYER_IDS  # out(k) as is: vLLM adds 1
    for key in ("eagle_aux_hidden_state_layer_ids", "dflash_config", "dspark_target_layer_ids", "eagle_config"):
        assert key not in cfg  # the keys vLLM would read before target_layer_ids
    assert cfg["block_size"] == 4 and cfg["mask_token_id"] == draft.config.mask_token_id
    assert cfg["num_target_layers"] == NUM_TARGET_LAYERS
    assert (cfg["markov_rank"], cfg["markov_head_type"]) == (16, "vanilla")
    assert cfg["enable_confidence_head"] is True and cfg["confidence_head_with_markov"] is True
    assert "draftsmith" not in cfg
    kept = cfg["draftsmith_export"]
    assert kept["format"] == "vllm" and kept["engine_layer_ids"] == [i + 1 for i in LAYER_IDS]
    names = set(load_file(str(tmp_path / "v" / "model.safetensors")))
    assert names == set(draft.state_dict())  # native names, embedding and head included
    assert not {"d2t", "t2d"} & names  # full vocabulary


def test_vllm_writes_sample_from_anchor_and_dspark_bonus_anchor(make, tmp_path):
    """Regression (vllm#56792): vLLM's DSpark speculator runs the DFlash 1+N block unless told otherwise
    (``sample_from_anchor = not dspark_bonus_anchor``); both are written, with DSpark's meaning."""
    cfg = _config(_export(make(), "vllm", tmp_path / "v"))
    assert cfg["sample_from_anchor"] is True
    assert cfg["dspark_bonus_anchor"] is False


@pytest.mark.parametrize("head", ["gated", "rnn"])
def test_vllm_refuses_markov_heads_vllm_does_not_serve(make, tmp_path, head):
    with pytest.raises(ConfigError, match=f"only the vanilla Markov head.*{head!r}.*--format sglang or speculators"):
        _export(make(markov_head_type=head), "vllm", tmp_path / "v")
    assert not (tmp_path / "v").exists()


# -- sglang ------------------------------------------------------------------------------------------------------
def test_sglang_writes_the_specforge_and_sglang_blocks(make, tmp_path):
    draft = make()
    cfg = _config(_export(draft, "sglang", tmp_path / "s"))
    assert cfg["architectures"] == ["DSparkDraftModel"] and cfg["model_type"] == "qwen3"
    assert cfg["block_size"] == 4 and cfg["layer_types"] == ["full_attention"] * 2  # bidirectional blocks
    dflash, dspark = cfg["dflash_config"], cfg["dspark_config"]
    assert dflash["target_layer_ids"] == LAYER_IDS and dspark["target_layer_ids"] == LAYER_IDS  # out(k)
    assert dflash["projector_type"] == "dspark" and dflash["attention_mode"] == "gqa"  # 4 heads, 2 KV heads
    for block in (dflash, dspark):
        assert block["mask_token_id"] == draft.config.mask_token_id
        assert (block["markov_rank"], block["markov_head_type"]) == (16, "vanilla")
        # SpecForge's defaults differ (confidence_head_with_markov false): written explicitly
        assert block["enable_confidence_head"] is True and block["confidence_head_with_markov"] is True
    assert dspark["sample_from_anchor"] is True
    assert "draftsmith" not in cfg and "target_layer_ids" not in cfg
    names = set(load_file(str(tmp_path / "s" / "model.safetensors")))
    assert names == set(draft.state_dict()) - {"embed_tokens.weight", "lm_head.weight"}


def test_sglang_writes_mha_for_equal_head_counts(make, tmp_path, tiny):
    from draftsmith_dspark.draft_qwen3 import Qwen3DSparkModel

    tc = tiny.target_config("Qwen3ForCausalLM", NUM_TARGET_LAYERS, num_key_value_heads=4)
    draft = Qwen3DSparkModel(Qwen3DSparkModel.build_draft_config(tc, mask_token_id=tiny.MASK_ID,
                                                                 target_layer_ids=LAYER_IDS, num_draft_layers=1))
    cfg = _config(_export(draft, "sglang", tmp_path / "s"))
    assert cfg["dflash_config"]["attention_mode"] == "mha"  # SpecForge's gqa mode needs fewer KV heads


@pytest.mark.parametrize("fmt", ["sglang", "speculators"])
def test_plain_qwen3_clients_refuse_an_mlp_bias_and_a_partial_rotary(make, tmp_path, fmt):
    draft = make()
    draft.config.mlp_bias = True
    with pytest.raises(ConfigError, match=f"the {fmt!r} format has no MLP bias.*--format vllm"):
        _export(draft, fmt, tmp_path / "a", target="x")
    draft = make()
    draft.config.rope_parameters = {**draft.config.rope_parameters, "partial_rotary_factor": 0.5}
    with pytest.raises(ConfigError, match="rotate the whole head.*--format vllm"):
        _export(draft, fmt, tmp_path / "b", target="x")


# -- speculators -------------------------------------------------------------------------------------------------
def test_speculators_writes_the_speculators_dspark_config(make, tmp_path, target_dir):
    draft = make()
    cfg = _config(_export(draft, "speculators", tmp_path / "p"))
    assert cfg["speculators_model_type"] == "dspark" and cfg["architectures"] == ["DSparkDraftModel"]
    assert cfg["aux_hidden_state_layer_ids"] == [i + 1 for i in LAYER_IDS]  # in(k)
    assert cfg["sample_from_anchor"] is True and cfg["sliding_window_non_causal"] is False
    assert cfg["draft_vocab_size"] == draft.config.vocab_size == cfg["transformer_layer_config"]["vocab_size"]
    layer = cfg["transformer_layer_config"]
    assert layer["model_type"] == "qwen3" and layer["num_hidden_layers"] == 2
    assert layer["num_key_value_heads"] == 2 and layer["head_dim"] == draft.config.head_dim
    spec = cfg["speculators_config"]
    assert spec["algorithm"] == "dspark" and spec["verifier"]["name_or_path"] == str(target_dir)
    assert spec["proposal_methods"][0]["speculative_tokens"] == 4  # block_size: the anchor predicts too
    assert (cfg["markov_rank"], cfg["markov_head_type"], cfg["confidence_head_with_markov"]) == (16, "vanilla", True)
    assert "draftsmith" not in cfg
    names = set(load_file(str(tmp_path / "p" / "model.safetensors")))
    assert names == set(draft.state_dict()) - {"embed_tokens.weight", "lm_head.weight"}  # as speculators saves


def test_speculators_needs_to_know_its_verifier(tmp_path, tiny):
    from draftsmith_dspark.draft_qwen3 import Qwen3DSparkModel

    tc = tiny.target_config("Qwen3ForCausalLM", NUM_TARGET_LAYERS)  # built from config: no path to name
    draft = Qwen3DSparkModel(Qwen3DSparkModel.build_draft_config(tc, mask_token_id=tiny.MASK_ID,
                                                                 target_layer_ids=LAYER_IDS))
    with pytest.raises(ConfigError, match="--target"):
        _export(draft, "speculators", tmp_path / "x")
    cfg = _config(_export(draft, "speculators", tmp_path / "y", target="org/verifier"))
    assert cfg["speculators_config"]["verifier"]["name_or_path"] == "org/verifier"


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_refuses_the_last_target_layer(make, tmp_path, fmt):
    draft = make(target_layer_ids=[1, NUM_TARGET_LAYERS - 1])
    with pytest.raises(ConfigError, match=f"cannot serve target layer {NUM_TARGET_LAYERS - 1}"):
        _export(draft, fmt, tmp_path / "x")


@pytest.mark.parametrize("fmt", FORMATS)
def test_writers_refuse_unknown_options_and_a_non_empty_directory(make, tmp_path, fmt):
    with pytest.raises(ConfigError, match="only the option 'target'"):
        _export(make(), fmt, tmp_path / "x", dtype="bfloat16")
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "junk").write_text("")
    with pytest.raises(DraftsmithError, match="not empty"):
        _export(make(), fmt, tmp_path / "y")


# -- round trips through draftsmith.load_draft -------------------------------------------------------------------
ROUND_TRIPS = [("vllm", "vanilla"), ("sglang", "vanilla"), ("sglang", "gated"), ("sglang", "rnn"),
               ("speculators", "vanilla"), ("speculators", "gated"), ("speculators", "rnn")]


@pytest.mark.parametrize("fmt, head", ROUND_TRIPS)
def test_load_draft_reads_each_export_back_to_the_same_draft(make, tmp_path, fmt, head):
    draft = make(markov_head_type=head)
    out = _export(draft, fmt, tmp_path / fmt)
    assert read_draft_metadata(out)["format"] == fmt
    back = draftsmith.load_draft(out)
    assert type(back) is type(draft) and back.config.draftsmith == draft.config.draftsmith
    assert back.config.target_layer_ids == LAYER_IDS and back.config.markov_head_type == head
    ours, theirs = draft.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(theirs[name], ours[name], rtol=0, atol=0)
    for a, b in zip(_outputs(draft), _outputs(back)):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert not back.embed_tokens.weight.requires_grad  # the copies stay frozen


@pytest.mark.parametrize("options", [{"markov_rank": 0, "enable_confidence_head": False},
                                     {"enable_confidence_head": True, "confidence_head_with_markov": False}])
@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trips_keep_absent_heads_absent(make, tmp_path, fmt, options):
    draft = make(**options)
    back = draftsmith.load_draft(_export(draft, fmt, tmp_path / fmt))
    assert (back.markov_head is None) == (draft.markov_head is None)
    assert (back.confidence_head is None) == (draft.confidence_head is None)
    for a, b in zip(_outputs(draft), _outputs(back)):
        if a is not None:
            torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_a_public_speculators_checkpoint_reads_without_our_block(make, tmp_path, target_dir):
    """What speculators itself saves has no ``draftsmith_export``: ids come back −1, the verifier gives the
    embedding and head, the block is rebuilt from the foreign config."""
    draft = make()
    out = _export(draft, "speculators", tmp_path / "p")
    cfg = _config(out)
    del cfg["draftsmith_export"]
    (out / "config.json").write_text(json.dumps(cfg))
    back = draftsmith.load_draft(out)
    assert back.config.target_layer_ids == LAYER_IDS
    assert back.config.draftsmith["target_name_or_path"] == str(target_dir)
    for a, b in zip(_outputs(draft), _outputs(back)):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_a_vllm_layout_without_metadata_reads_back(make, tmp_path):
    """A DeepSpec / NeMo-style ``Qwen3DSparkModel`` directory without any draftsmith key."""
    draft = make()
    out = _export(draft, "vllm", tmp_path / "v")
    cfg = _config(out)
    del cfg["draftsmith_export"]
    (out / "config.json").write_text(json.dumps(cfg))
    back = draftsmith.load_draft(out)
    assert back.config.draftsmith["method"] == "dspark" and back.config.num_target_layers == NUM_TARGET_LAYERS
    for a, b in zip(_outputs(draft), _outputs(back)):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


# -- reader refusals ---------------------------------------------------------------------------------------------
def test_readers_refuse_the_bonus_anchor_layout(make, tmp_path):
    out = _edit(_export(make(), "vllm", tmp_path / "v"), dspark_bonus_anchor=True)
    with pytest.raises(ConfigError, match="bonus-anchor"):
        draftsmith.load_draft(out)
    out = _edit(_export(make(), "speculators", tmp_path / "p"), sample_from_anchor=False)
    with pytest.raises(ConfigError, match="sample_from_anchor false"):
        draftsmith.load_draft(out)


def test_speculators_reader_refuses_a_reduced_vocabulary(make, tmp_path):
    out = _edit(_export(make(), "speculators", tmp_path / "p"), draft_vocab_size=64)
    with pytest.raises(ConfigError, match="reduced draft vocabulary"):
        draftsmith.load_draft(out)


def test_sglang_reader_needs_the_target_for_embedding_and_head(make, tmp_path):
    out = _edit(_export(make(), "sglang", tmp_path / "s"), draftsmith_export=None)
    with pytest.raises(ConfigError, match="embed_tokens/lm_head.*target"):
        draftsmith.load_draft(out)


def test_reader_refuses_tensors_that_do_not_match_the_config(make, tmp_path):
    out = _edit(_export(make(), "vllm", tmp_path / "v"), markov_rank=0, confidence_head_with_markov=False)
    with pytest.raises(DraftsmithError, match="unexpected.*markov_head"):
        draftsmith.load_draft(out)


# -- detection ---------------------------------------------------------------------------------------------------
def test_each_export_is_claimed_by_its_own_format_only(make, tmp_path):
    from draftsmith import get_registry

    for fmt in FORMATS:
        spec = get_registry().detect_format(_config(_export(make(), fmt, tmp_path / fmt)))
        assert (spec.method, spec.name) == ("dspark", fmt)


def test_detectors_leave_native_dflash_and_eagle_layouts_alone(make, tmp_path):
    from draftsmith_dspark.export import export_native
    from draftsmith_dspark.registry import is_speculators_dspark, is_sglang_dspark, is_vllm_dspark

    native = _config(export_native(make(), tmp_path / "n"))
    others = [
        native,  # our own block: load_draft reads it natively
        {"architectures": ["DFlashDraftModel"], "dflash_config": {"target_layer_ids": [1], "mask_token_id": 3},
         "block_size": 16},  # z-lab / SGLang DFlash
        {"architectures": ["DFlashDraftModel"], "speculators_model_type": "dflash",
         "aux_hidden_state_layer_ids": [2]},  # speculators DFlash
        {"architectures": ["LlamaForCausalLMEagle3"], "eagle_config": {}},
        {"architectures": ["Eagle3LlamaForCausalLM"], "eagle_aux_hidden_state_layer_ids": [2]},
        {"architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3"},
    ]
    for cfg in others:
        assert not (is_vllm_dspark(cfg) or is_sglang_dspark(cfg) or is_speculators_dspark(cfg)), cfg


def test_the_detectors_are_torch_free():
    import subprocess
    import sys

    code = ("import sys; import draftsmith_dspark.registry as r; "
            "r.is_vllm_dspark({}); r.is_sglang_dspark({}); r.is_speculators_dspark({}); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
