"""Qwen3DSparkModel: config derived from the target, mask-token validation, frozen target copies, forward +
backward for every registered architecture, the native checkpoint and the load_draft round trip."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import draftsmith
from draftsmith.errors import ConfigError, DraftsmithError
from draftsmith.method import TargetRequest
from draftsmith.target import run_target
from draftsmith_dspark.anchors import sample_block_anchors
from draftsmith_dspark.draft_qwen3 import Qwen3DSparkModel
from draftsmith_dspark.export import export_native
from draftsmith_dspark.registry import ARCHITECTURES


def test_config_reads_target_dims_and_dspark_defaults(tiny):
    tc = tiny.target_config("Qwen3ForCausalLM", 36, rope_parameters={"rope_type": "default", "rope_theta": 5e5})
    cfg = Qwen3DSparkModel.build_draft_config(tc, mask_token_id=5)
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (64, 4, 2, 16)
    assert cfg.num_hidden_layers == 5 and cfg.block_size == 7 and cfg.num_anchors == 512
    assert cfg.target_layer_ids == [1, 10, 18, 26, 35] and cfg.num_target_layers == 36
    assert (cfg.markov_rank, cfg.markov_head_type) == (256, "vanilla")
    assert cfg.enable_confidence_head and cfg.confidence_head_with_markov and cfg.freeze_embeddings
    assert cfg.rope_parameters["rope_theta"] == 5e5 and cfg.layer_types == ["full_attention"] * 5
    assert cfg.architectures == ["Qwen3DSparkModel"] and cfg.model_type == "qwen3"
    assert cfg.tie_word_embeddings is False
    block = cfg.draftsmith
    assert block["method"] == "dspark" and block["target_layer_ids"] == [1, 10, 18, 26, 35]
    assert block["draft_class"] == "draftsmith_dspark.draft_qwen3:Qwen3DSparkModel"
    assert block["target_architectures"] == ["Qwen3ForCausalLM"] and block["layer_id_convention"] == "output-of-layer"


def test_options_override_and_derive(tiny):
    tc = tiny.target_config("LlamaForCausalLM", 8, mlp_bias=True,
                            rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0,
                                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                             "original_max_position_embeddings": 64})
    cfg = Qwen3DSparkModel.build_draft_config(tc, mask_token_id=5, num_draft_layers=2, block_size=5,
                                              markov_rank=0, confidence_head_alpha=0.0, loss_decay_gamma=3.0)
    assert cfg.target_layer_ids == [1, 7] and cfg.num_hidden_layers == 2 and cfg.block_size == 5
    assert cfg.markov_rank == 0 and not cfg.confidence_head_with_markov and not cfg.enable_confidence_head
    assert cfg.mlp_bias is True and cfg.rope_parameters["rope_type"] == "llama3" and cfg.head_dim == 16
    draft = Qwen3DSparkModel(cfg)
    assert draft.markov_head is None and draft.confidence_head is None
    assert draft.layers[0].mlp.gate_proj.bias is not None
    cfg = Qwen3DSparkModel.build_draft_config(tc, mask_token_id=5, target_layer_ids=[-1, 3], markov_head_type="rnn")
    assert cfg.target_layer_ids == [-1, 3] and Qwen3DSparkModel(cfg).fc.in_features == 2 * 64


@pytest.mark.parametrize("form", ["rope_parameters", "attribute"])
def test_partial_rotary_target_keeps_its_convention(tiny, tmp_path, form):
    """A partial-rotary target (half of each head rotates) gets a partial-rotary draft, as DFlash/EAGLE drafts do
    (the draft config used to drop the factor and rotate the whole head)."""
    rope = {"rope_type": "default", "rope_theta": 1e4}
    if form == "rope_parameters":  # transformers 5 keeps the factor inside rope_parameters
        tc = tiny.target_config(rope_parameters={**rope, "partial_rotary_factor": 0.5})
    else:  # older configs carry it as an attribute
        tc = tiny.target_config(rope_parameters=rope)
        tc.partial_rotary_factor = 0.5
    cfg = Qwen3DSparkModel.build_draft_config(tc, mask_token_id=5, num_draft_layers=1)
    assert cfg.rope_parameters["partial_rotary_factor"] == 0.5 and cfg.partial_rotary_factor == 0.5
    draft = Qwen3DSparkModel(cfg)
    head_dim = 16
    rotary = int(head_dim * 0.5)
    assert draft.rotary_emb.inv_freq.shape == (rotary // 2,)  # head_dim·0.5/2 frequencies
    expected = 1.0 / (1e4 ** (torch.arange(0, rotary, 2, dtype=torch.float32) / rotary))
    torch.testing.assert_close(draft.rotary_emb.inv_freq, expected)
    # the unrotated half of q/k passes through: slot positions change only the first `rotary` dims
    cos, sin = draft.rotary_emb(torch.zeros(1, 1, head_dim), torch.tensor([[3]]))
    assert cos.shape[-1] == rotary
    out = export_native(draft, tmp_path / "partial")
    assert json.loads((out / "config.json").read_text())["rope_parameters"]["partial_rotary_factor"] == 0.5
    torch.testing.assert_close(draftsmith.load_draft(out).rotary_emb.inv_freq, expected)


@pytest.mark.parametrize("mask, msg", [(None, "needs `mask_token_id`"), (128, "outside"), (-1, "outside"),
                                       (0, "pad token id"), (2, "eos"), ("5", "int")])
def test_mask_token_is_required_and_validated(tiny, mask, msg):
    tc = tiny.target_config()
    with pytest.raises(ConfigError, match=msg):
        Qwen3DSparkModel.build_draft_config(tc, mask_token_id=mask)


def test_bad_options_are_rejected(tiny):
    tc = tiny.target_config()
    with pytest.raises(ConfigError, match="DSpark draft: unknown option"):
        Qwen3DSparkModel.build_draft_config(tc, mask_token_id=5, markov_ranks=3)
    with pytest.raises(ConfigError, match="markov_head_type"):
        Qwen3DSparkModel.build_draft_config(tc, mask_token_id=5, markov_head_type="lstm")
    with pytest.raises(ConfigError, match="out of range"):
        Qwen3DSparkModel.build_draft_config(tc, mask_token_id=5, target_layer_ids=[1, 4])
    with pytest.raises(ConfigError, match="block_size"):
        Qwen3DSparkModel.build_draft_config(tc, mask_token_id=5, block_size=0)


def test_fresh_draft_is_the_parallel_drafter_and_copies_are_frozen(tiny):
    tc = tiny.target_config()
    target = tiny.make_target(tc)
    draft = Qwen3DSparkModel(Qwen3DSparkModel.build_draft_config(tc, mask_token_id=5, num_draft_layers=1))
    assert torch.count_nonzero(draft.markov_head.markov_w2.weight) == 0
    draft.copy_embeddings_from_target(target.get_input_embeddings(), target.get_output_embeddings())
    assert torch.equal(draft.embed_tokens.weight, target.get_input_embeddings().weight)
    assert torch.equal(draft.lm_head.weight, target.get_output_embeddings().weight)
    assert draft.embed_tokens.weight.data_ptr() != target.get_input_embeddings().weight.data_ptr()  # a copy
    assert not draft.embed_tokens.weight.requires_grad and not draft.lm_head.weight.requires_grad
    biased = torch.nn.Linear(64, 128, bias=True)
    with pytest.raises(ValueError, match="bias"):
        draft.copy_embeddings_from_target(target.get_input_embeddings(), biased)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_forward_backward_every_registered_architecture(tiny, arch):
    tc = tiny.target_config(arch)
    target = tiny.make_target(tc)
    draft = draftsmith.resolve_draft_spec("dspark", tc.architectures).build(
        tc, mask_token_id=tiny.MASK_ID, num_draft_layers=2, markov_rank=8, num_anchors=6)
    assert isinstance(draft, Qwen3DSparkModel)
    draft.copy_embeddings_from_target(target.get_input_embeddings(), target.get_output_embeddings())
    draft.freeze_embeddings()
    batch = tiny.make_batch(batch=2, length=20, pad=3)
    request = TargetRequest(layer_ids=tuple(draft.config.target_layer_ids), final_hidden=True)
    feats, _ = run_target(target, request, batch["input_ids"])
    anchors, keep = sample_block_anchors(batch["loss_mask"], draft.config.num_anchors, torch.Generator().manual_seed(0))
    out = draft(batch["input_ids"], feats.stacked(request.layer_ids), batch["loss_mask"], feats.final_hidden,
                anchors=anchors, block_keep_mask=keep)
    a, g, v = 6, 7, tc.vocab_size
    assert out.draft_logits.shape == (2, a, g, v) and out.aligned_target_logits.shape == (2, a, g, v)
    assert out.target_ids.shape == out.eval_mask.shape == out.confidence_pred.shape == (2, a, g)
    assert out.block_keep_mask.shape == (2, a) and out.eval_mask.dtype == torch.bool
    assert out.confidence_pred.dtype == torch.float32
    assert torch.isfinite(out.draft_logits).all()
    from draftsmith_dspark.loss import compute_dspark_loss

    loss = compute_dspark_loss(out).loss
    loss.backward()
    trainable = {n: p for n, p in draft.named_parameters() if p.requires_grad}
    assert "embed_tokens.weight" not in trainable and "lm_head.weight" not in trainable
    for name, p in trainable.items():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert draft.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert draft.fc.weight.grad.abs().sum() > 0 and draft.markov_head.markov_w2.weight.grad.abs().sum() > 0


def test_native_checkpoint_layout_and_round_trip(tiny, tmp_path):
    tc = tiny.target_config()
    draft = tiny.make_draft(tc, markov_head_type="gated")
    out = export_native(draft, tmp_path / "d")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    for key, value in [("architectures", ["Qwen3DSparkModel"]), ("block_size", 7), ("mask_token_id", tiny.MASK_ID),
                       ("target_layer_ids", [1, 3]), ("num_target_layers", 4), ("markov_rank", 16),
                       ("markov_head_type", "gated"), ("enable_confidence_head", True),
                       ("confidence_head_with_markov", True), ("num_hidden_layers", 2), ("hidden_size", 64),
                       ("num_attention_heads", 4), ("num_key_value_heads", 2), ("head_dim", 16), ("vocab_size", 128)]:
        assert config[key] == value, key
    assert config["draftsmith"]["method"] == "dspark"
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    expected = {"embed_tokens.weight", "lm_head.weight", "fc.weight", "hidden_norm.weight", "norm.weight",
                "layers.0.self_attn.q_proj.weight", "layers.1.mlp.down_proj.weight", "layers.0.self_attn.k_norm.weight",
                "markov_head.markov_w1.weight", "markov_head.markov_w2.weight", "markov_head.gate_proj.weight",
                "confidence_head.proj.weight", "confidence_head.proj.bias"}
    assert expected <= keys and not any("inv_freq" in k for k in keys)
    loaded = draftsmith.load_draft(out)
    assert type(loaded) is Qwen3DSparkModel and not loaded.lm_head.weight.requires_grad
    for (n, a), (_, b) in zip(draft.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n
    torch.testing.assert_close(loaded.rotary_emb.inv_freq, draft.rotary_emb.inv_freq)
    assert loaded.rotary_emb.inv_freq.dtype == torch.float32
    # identical outputs after the round trip
    batch = tiny.make_batch(batch=1, length=16)
    th = torch.randn(1, 16, 128)
    anchors = torch.tensor([[4, 9]])
    a = draft(batch["input_ids"], th, batch["loss_mask"], anchors=anchors)
    b = loaded(batch["input_ids"], th, batch["loss_mask"], anchors=anchors)
    torch.testing.assert_close(a.draft_logits, b.draft_logits)
    torch.testing.assert_close(a.confidence_pred, b.confidence_pred)


def test_export_bf16_and_guards(tiny, tmp_path):
    tc = tiny.target_config()
    draft = tiny.make_draft(tc)
    out = export_native(draft, tmp_path / "bf16", dtype="bfloat16")
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert next(draft.parameters()).dtype == torch.float32  # the live draft is untouched
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.get_tensor("fc.weight").dtype == torch.bfloat16
    loaded = draftsmith.load_draft(out)
    assert loaded.rotary_emb.inv_freq.dtype == torch.float32  # pinned fp32 whatever the weights' dtype
    with pytest.raises(DraftsmithError, match="not empty"):
        export_native(draft, out)
    with pytest.raises(DraftsmithError, match="dtype"):
        export_native(draft, tmp_path / "x", dtype="int8")
    with pytest.raises(DraftsmithError, match="unknown"):
        export_native(draft, tmp_path / "y", vllm=True)


def test_inv_freq_stays_fp32_after_cast(tiny):
    draft = tiny.make_draft(tiny.target_config())
    ref = draft.rotary_emb.inv_freq.clone()
    draft.to(torch.bfloat16)
    assert draft.rotary_emb.inv_freq.dtype == torch.float32 and torch.equal(draft.rotary_emb.inv_freq, ref)


def test_padding_columns_are_skipped_without_changing_results(tiny):
    draft = tiny.make_draft(tiny.target_config())
    batch = tiny.make_batch(batch=2, length=16)
    th = torch.randn(2, 16, 128)
    anchors = torch.tensor([[4, 9, 0, 0], [3, 0, 0, 0]])
    keep = torch.tensor([[True, True, False, False], [True, False, False, False]])
    padded = draft.forward_hidden(batch["input_ids"], th, batch["loss_mask"], anchors=anchors, block_keep_mask=keep)
    short = draft.forward_hidden(batch["input_ids"], th, batch["loss_mask"], anchors=anchors[:, :2],
                                 block_keep_mask=keep[:, :2])
    assert padded.hidden.shape == (2, 4, 7, 64)
    torch.testing.assert_close(padded.hidden[:, :2], short.hidden)
    assert torch.count_nonzero(padded.hidden[:, 2:]) == 0 and not padded.eval_mask[:, 2:].any()


def test_all_padding_batch_gives_a_connected_zero_loss(tiny):
    from draftsmith.method import TargetFeatures
    from draftsmith.target import target_heads
    from draftsmith_dspark.objective import DSparkObjective

    tc = tiny.target_config()
    draft = tiny.make_draft(tc)
    obj = DSparkObjective(draft, target_heads(tiny.make_target(tc)))
    batch = tiny.make_batch(batch=1, length=10)
    batch["loss_mask"].zero_()
    feats = TargetFeatures(hidden_states={i: torch.randn(1, 10, 64) for i in (1, 3)},
                           final_hidden=torch.randn(1, 10, 64))
    out = obj(batch, feats)
    assert out.num_tokens == 0 and float(out.loss.detach()) == 0.0
    out.loss.backward()
    assert draft.layers[0].mlp.up_proj.weight.grad is not None  # DDP-safe: every parameter gets a gradient
