"""DSparkObjective through the method registry: target request, heads binding, fused loss == reference loss,
padding/packing, option handling, and a short training run that learns."""

from __future__ import annotations

import pytest
import torch

import draftsmith
from draftsmith.errors import ConfigError
from draftsmith.method import HasRunState, ObjectiveOutput, TargetFeatures
from draftsmith.target import run_target, target_heads
from draftsmith_dspark.loss import compute_dspark_loss
from draftsmith_dspark.draft_qwen3 import Qwen3DSparkModel
from draftsmith_dspark.objective import DSparkObjective


@pytest.fixture(scope="module")
def setup(tiny):
    tc = tiny.target_config()
    target = tiny.make_target(tc)
    return tc, target, target_heads(target)


def _objective(tiny, tc, heads, **options):
    method = draftsmith.get_method("dspark")
    assert method.load_objective() is DSparkObjective
    kind = options.pop("markov_head_type", "vanilla")
    draft = tiny.make_draft(tc, markov_head_type=kind)
    opts = {**method.default_options, "num_anchors": 6, **options}
    return draft, method.load_objective()(draft, heads, **opts)


def _features(target, objective, batch):
    feats, _ = run_target(target, objective.target_request(), batch["input_ids"],
                          attention_mask=batch["attention_mask"])
    return feats


def test_target_request_and_heads_binding(tiny, setup):
    tc, target, heads = setup
    draft, obj = _objective(tiny, tc, heads)
    req = obj.target_request()
    assert req.layer_ids == (1, 3) and req.final_hidden
    assert torch.equal(draft.embed_tokens.weight, heads.embed_tokens.weight)
    assert torch.equal(draft.lm_head.weight, heads.lm_head.weight)
    assert not draft.lm_head.weight.requires_grad and not draft.embed_tokens.weight.requires_grad
    _, ce_only = _objective(tiny, tc, heads, l1_loss_alpha=0.0, confidence_head_alpha=0.0, ce_loss_alpha=1.0)
    assert not ce_only.target_request().final_hidden


@pytest.mark.parametrize("kind", ["vanilla", "gated"])
def test_fused_objective_equals_reference_loss(tiny, setup, kind):
    tc, target, heads = setup
    draft, obj = _objective(tiny, tc, heads, markov_head_type=kind)
    with torch.no_grad():
        draft.markov_head.markov_w2.weight.normal_(std=0.3)  # make the Markov bias matter
    batch = tiny.make_batch(batch=2, length=20, pad=4)
    feats = _features(target, obj, batch)
    out = obj(batch, feats)
    assert isinstance(out, ObjectiveOutput)
    out.loss.backward()
    fused_grads = {n: p.grad.clone() for n, p in draft.named_parameters() if p.grad is not None}
    draft.zero_grad()
    obj.load_run_state({"calls": 0})  # the stream's first draw again: same anchors
    loss_mask = batch["loss_mask"].bool() & batch["attention_mask"].bool()
    anchors, keep = obj.draw_anchors(loss_mask)
    assert anchors.shape == (2, 6)
    ref_out = draft(batch["input_ids"], feats.stacked([1, 3]), loss_mask, feats.final_hidden, anchors=anchors,
                    block_keep_mask=keep)  # dense SDPA mask: also checks the grouped backend
    ref = compute_dspark_loss(ref_out)
    ref.loss.backward()
    torch.testing.assert_close(out.loss, ref.loss)
    assert out.num_tokens == ref.num_tokens == int(ref_out.eval_mask.sum())
    for key in ("accuracy", "tau_sim", "tau_analytic", "accept_rate", "accept_rate@1", "accept_rate@7", "ce_loss",
                "tv_loss", "conf_loss", "conf_abs_error", "conf_bias", "conf_cumprod_bias", "loss"):
        torch.testing.assert_close(torch.as_tensor(out.metrics[key]), torch.as_tensor(ref.metrics[key]))
        assert not torch.as_tensor(out.metrics[key]).requires_grad
    for name, g in fused_grads.items():
        torch.testing.assert_close(g, dict(draft.named_parameters())[name].grad, rtol=1e-4, atol=1e-6)


def test_deepspec_dflash_baseline_configuration(tiny, setup):
    """DeepSpec's "DFlash" baseline is this code with markov_rank=0, no confidence head, CE only."""
    tc, target, heads = setup
    draft = tiny.make_draft(tc, markov_rank=0, confidence_head_alpha=0.0)
    assert draft.markov_head is None and draft.confidence_head is None
    obj = DSparkObjective(draft, heads, ce_loss_alpha=1.0, l1_loss_alpha=0.0, confidence_head_alpha=0.0,
                          num_anchors=6)
    assert not obj.target_request().final_hidden
    batch = tiny.make_batch(batch=1, length=16)
    feats = TargetFeatures(hidden_states={i: torch.randn(1, 16, 64) for i in (1, 3)})
    out = obj(batch, feats)
    out.loss.backward()
    torch.testing.assert_close(out.loss.detach(), out.metrics["ce_loss"])
    assert "tv_loss" not in out.metrics and "tau_sim" in out.metrics


def test_bf16_autocast_step_tracks_fp32(tiny, setup):
    tc, target, heads = setup
    draft, obj = _objective(tiny, tc, heads)
    batch = tiny.make_batch(batch=2, length=20)
    feats = _features(target, obj, batch)
    ref = obj(batch, feats)
    obj.load_run_state({"calls": 0})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = obj(batch, feats)
    out.loss.backward()
    assert torch.isfinite(out.loss) and float(out.loss.detach()) == pytest.approx(float(ref.loss.detach()), rel=0.05)
    assert all(torch.isfinite(p.grad).all() for p in draft.parameters() if p.grad is not None)


def test_padding_is_never_anchored_or_supervised(tiny, setup):
    tc, target, heads = setup
    draft, obj = _objective(tiny, tc, heads, num_anchors=40)
    batch = tiny.make_batch(batch=2, length=16, pad=6)
    batch["loss_mask"][-1, -6:] = 1  # even a loss mask that (wrongly) covers padding
    feats = _features(target, obj, batch)
    loss_mask = batch["loss_mask"].bool() & batch["attention_mask"].bool()
    anchors, keep = obj.draw_anchors(loss_mask)
    hid = draft.forward_hidden(batch["input_ids"], feats.stacked([1, 3]), loss_mask, feats.final_hidden,
                               anchors=anchors, block_keep_mask=keep)
    assert hid.anchors.shape == (2, 40)
    kept = hid.anchors[1][hid.block_keep_mask[1]]
    assert kept.max() <= 8  # the last real pair (8, 9) of the padded row
    labels = hid.anchors[1, :, None] + 1 + torch.arange(7)
    assert not (hid.eval_mask[1] & (labels >= 10)).any()
    assert obj(batch, feats).num_tokens == int(hid.eval_mask.sum())


def test_packed_batch_runs_with_position_ids(tiny, setup):
    tc, target, heads = setup
    _, obj = _objective(tiny, tc, heads)
    batch = tiny.make_batch(batch=1, length=20, prompt=0)
    batch["position_ids"] = torch.tensor([list(range(8)) + list(range(12))])
    feats = TargetFeatures(hidden_states={i: torch.randn(1, 20, 64) for i in (1, 3)},
                           final_hidden=torch.randn(1, 20, 64))
    out = obj(batch, feats)
    assert torch.isfinite(out.loss) and out.num_tokens > 0


def test_options(tiny, setup):
    tc, target, heads = setup
    with pytest.raises(ConfigError, match="DSpark objective: unknown option"):
        _objective(tiny, tc, heads, learning_rate=1e-3)
    with pytest.raises(ConfigError, match="block_size"):
        _objective(tiny, tc, heads, block_size=4)
    _objective(tiny, tc, heads, block_size=7, markov_rank=16)  # agreeing draft options are fine
    with pytest.raises(ConfigError, match="attention_backend"):
        _objective(tiny, tc, heads, attention_backend="xformers")
    with pytest.raises(ConfigError, match="loss weights"):
        _objective(tiny, tc, heads, ce_loss_alpha=0.0, l1_loss_alpha=0.0)
    for bad in (0.0, -1.0, "3", True):
        with pytest.raises(ConfigError, match="first_slot_weight"):
            _objective(tiny, tc, heads, first_slot_weight=bad)
    draft = tiny.make_draft(tc)
    import dataclasses

    with pytest.raises(ConfigError, match="eos"):  # the heads may know eos ids the config did not
        DSparkObjective(draft, dataclasses.replace(heads, eos_token_ids=(2, tiny.MASK_ID)))
    small = target_heads(tiny.make_target(tiny.target_config(vocab_size=64)))
    with pytest.raises(ConfigError, match="vocab"):
        DSparkObjective(draft, small)
    _, obj = _objective(tiny, tc, heads)
    batch = tiny.make_batch(batch=1, length=12)
    no_final = TargetFeatures(hidden_states={i: torch.randn(1, 12, 64) for i in (1, 3)})
    with pytest.raises(ValueError, match="final_hidden"):
        obj(batch, no_final)


def test_anchor_draws_are_seeded_resumable_and_change_per_call(tiny, setup):
    tc, target, heads = setup
    _, obj = _objective(tiny, tc, heads)
    batch = tiny.make_batch(batch=1, length=24)
    feats = _features(target, obj, batch)
    first, second = obj(batch, feats), obj(batch, feats)
    assert isinstance(obj, HasRunState) and obj.run_state() == {"calls": 2}  # what training checkpoints save
    assert float(first.loss.detach()) != float(second.loss.detach())  # new anchors each call
    obj.load_run_state({"calls": 1})
    torch.testing.assert_close(obj(batch, feats).loss, second.loss)  # resumed: the same draw
    _, other = _objective(tiny, tc, heads, seed=1)
    assert float(other(batch, feats).loss.detach()) != float(first.loss.detach())


def test_short_training_run_learns(tiny, setup):
    tc, target, heads = setup
    torch.manual_seed(0)
    draft = Qwen3DSparkModel(Qwen3DSparkModel.build_draft_config(tc, mask_token_id=tiny.MASK_ID, num_draft_layers=1,
                                                                 markov_rank=16))  # the library's own init
    obj = DSparkObjective(draft, heads, num_anchors=32)  # every candidate: the same blocks each step
    batch = tiny.make_batch(batch=2, length=20, seed=11)
    feats = _features(target, obj, batch)
    optim = torch.optim.AdamW([p for p in draft.parameters() if p.requires_grad], lr=1e-2)
    first = obj(batch, feats)
    for _ in range(30):
        out = obj(batch, feats)
        optim.zero_grad()
        out.loss.backward()
        optim.step()
    last = obj(batch, feats)
    assert float(last.loss.detach()) < 0.6 * float(first.loss.detach())
    assert float(last.metrics["tau_analytic"]) > float(first.metrics["tau_analytic"]) + 0.5
    assert float(last.metrics["conf_abs_error"]) < float(first.metrics["conf_abs_error"])
    assert float(torch.count_nonzero(draft.markov_head.markov_w2.weight)) > 0  # the Markov head trained
