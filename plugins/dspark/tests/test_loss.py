"""methods.md §6 items 14–15 and the loss contract: 0.1·CE + 0.9·L1 + 1.0·BCE as weighted means, fused
(never-materialised) path == materialised reference path in value and gradient, chunking invariance,
diagnostics, and global denominators under data parallelism (2 gloo processes)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from draftsmith_dspark.anchors import DSparkForwardOutput, slot_decay_weights
from draftsmith_dspark.fused_logits import fused_slot_loss
from draftsmith_dspark.loss import compute_dspark_loss, fused_dspark_loss

V = 40


def _output(seed=0, b=2, a=3, g=7, teacher=None, conf=True, holes=True):
    gen = torch.Generator().manual_seed(seed)
    draft = torch.randn(b, a, g, V, generator=gen, requires_grad=True)
    tgt = torch.randn(b, a, g, V, generator=gen) * 2 if teacher is None else teacher
    ids = torch.randint(0, V, (b, a, g), generator=gen)
    lengths = torch.randint(0, g + 1, (b, a), generator=gen) if holes else torch.full((b, a), g)
    eval_mask = torch.arange(g)[None, None] < lengths[..., None]
    keep = lengths > 0
    c = torch.randn(b, a, g, generator=gen, requires_grad=True) if conf else None
    return DSparkForwardOutput(draft_logits=draft, target_ids=ids, eval_mask=eval_mask, block_keep_mask=keep,
                               confidence_pred=c, aligned_target_logits=tgt)


def test_item14_zero_tv_when_draft_equals_teacher():
    out = _output()
    out.aligned_target_logits = out.draft_logits.detach().clone()
    res = compute_dspark_loss(out, ce_loss_alpha=0.0, l1_loss_alpha=0.9, confidence_head_alpha=0.0)
    assert float(res.metrics["tv_loss"]) == pytest.approx(0.0, abs=1e-6)
    assert float(res.loss.detach()) == pytest.approx(0.0, abs=1e-6)
    assert float(res.metrics["accept_rate"]) == pytest.approx(1.0, abs=1e-6)
    # the same from hidden states: identical draft and teacher states, no Markov bias
    h = torch.randn(2, 3, 7, 8)
    w = torch.randn(V, 8)
    mask = torch.ones(2, 3, 7, dtype=torch.bool)
    fused = fused_dspark_loss(h.requires_grad_(), torch.zeros(2, 3, 7, dtype=torch.long), mask, mask.all(-1), w,
                              teacher_hidden=h.detach(), ce_loss_alpha=0.0, confidence_head_alpha=0.0)
    assert float(fused.loss.detach()) == pytest.approx(0.0, abs=1e-6)


def test_weighted_means_and_total():
    out = _output(seed=1)
    res = compute_dspark_loss(out)
    m = out.eval_mask
    w = (m.float() * slot_decay_weights(7, 4.0))[m]
    logp = torch.log_softmax(out.draft_logits.detach()[m], -1)
    ce = -logp.gather(1, out.target_ids[m][:, None])[:, 0]
    l1 = (logp.exp() - torch.softmax(out.aligned_target_logits[m], -1)).abs().sum(-1)
    alpha = (1 - 0.5 * l1).clamp(0, 1)
    bce = F.binary_cross_entropy_with_logits(out.confidence_pred.detach()[m], alpha, reduction="none")
    mean = lambda x: float((w * x).sum() / w.sum())  # noqa: E731
    assert float(res.metrics["ce_loss"]) == pytest.approx(mean(ce), rel=1e-5)
    assert float(res.metrics["tv_loss"]) == pytest.approx(mean(l1), rel=1e-5)
    assert float(res.metrics["conf_loss"]) == pytest.approx(mean(bce), rel=1e-5)
    total = 0.1 * mean(ce) + 0.9 * mean(l1) + 1.0 * mean(bce)
    assert float(res.loss.detach()) == pytest.approx(total, rel=1e-5)
    assert float(res.metrics["loss"]) == pytest.approx(total, rel=1e-5)
    assert res.num_tokens == int(m.sum())


@pytest.mark.parametrize("first", [1.0, 3.0])
def test_first_slot_weight_multiplies_slot_one_in_every_term(first):
    """Slot 1 (k = 0) weighs ``first_slot_weight · exp(0)``, the others ``exp(−k/γ_d)``, in all three terms and in
    their shared normaliser; the fused path equals the materialised one with the same option."""
    out = _output(seed=4, holes=False)
    res = compute_dspark_loss(out, first_slot_weight=first)
    m = out.eval_mask
    decay = torch.exp(-torch.arange(7, dtype=torch.float64) / 4.0).float()
    decay[0] = first
    w = (m.float() * decay)[m]
    logp = torch.log_softmax(out.draft_logits.detach()[m], -1)
    ce = -logp.gather(1, out.target_ids[m][:, None])[:, 0]
    l1 = (logp.exp() - torch.softmax(out.aligned_target_logits[m], -1)).abs().sum(-1)
    bce = F.binary_cross_entropy_with_logits(out.confidence_pred.detach()[m], (1 - 0.5 * l1).clamp(0, 1),
                                             reduction="none")
    mean = lambda x: float((w * x).sum() / w.sum())  # noqa: E731
    assert float(res.loss.detach()) == pytest.approx(0.1 * mean(ce) + 0.9 * mean(l1) + mean(bce), rel=1e-5)
    # the fused path (from hidden states) takes the same weights
    gen = torch.Generator().manual_seed(5)
    h = torch.randn(2, 3, 7, 8, generator=gen, requires_grad=True)
    th = torch.randn(2, 3, 7, 8, generator=gen)
    lm = torch.randn(V, 8, generator=gen)
    ids = torch.randint(0, V, (2, 3, 7), generator=gen)
    full = torch.ones(2, 3, 7, dtype=torch.bool)
    fused = fused_dspark_loss(h, ids, full, full.all(-1), lm, teacher_hidden=th, confidence_head_alpha=0.0,
                              first_slot_weight=first)
    ref = compute_dspark_loss(DSparkForwardOutput(draft_logits=h @ lm.T, target_ids=ids, eval_mask=full,
                                                  block_keep_mask=full.all(-1), confidence_pred=None,
                                                  aligned_target_logits=th @ lm.T),
                              confidence_head_alpha=0.0, first_slot_weight=first)
    torch.testing.assert_close(fused.loss, ref.loss, rtol=1e-5, atol=1e-6)
    if first != 1.0:  # and the option changes the loss
        assert float(ref.loss.detach()) != pytest.approx(float(compute_dspark_loss(
            DSparkForwardOutput(draft_logits=h @ lm.T, target_ids=ids, eval_mask=full, block_keep_mask=full.all(-1),
                                confidence_pred=None, aligned_target_logits=th @ lm.T),
            confidence_head_alpha=0.0).loss.detach()), rel=1e-4)


def test_weighted_mean_of_uniform_ce_is_that_ce():
    out = _output(seed=2)
    out.draft_logits = torch.zeros(2, 3, 7, V, requires_grad=True)  # CE = log V everywhere
    res = compute_dspark_loss(out, l1_loss_alpha=0.0, confidence_head_alpha=0.0, ce_loss_alpha=1.0)
    assert float(res.loss.detach()) == pytest.approx(math.log(V), rel=1e-6)


def test_item15_confidence_target_is_detached_analytic_acceptance():
    out = _output(seed=3)
    teacher = out.aligned_target_logits.clone().requires_grad_()
    out.aligned_target_logits = teacher
    res = compute_dspark_loss(out, ce_loss_alpha=0.0, l1_loss_alpha=0.0, confidence_head_alpha=1.0)
    res.loss.backward()
    assert teacher.grad is None  # no gradient to the teacher
    assert out.draft_logits.grad is None or torch.count_nonzero(out.draft_logits.grad) == 0  # target detached
    m = out.eval_mask
    p = torch.softmax(out.draft_logits.detach()[m], -1)
    alpha = torch.minimum(p, torch.softmax(teacher.detach()[m], -1)).sum(-1)  # Σ min = clamp(1 − ½L1)
    w = (m.float() * slot_decay_weights(7, 4.0))[m]
    sig = torch.sigmoid(out.confidence_pred.detach()[m])
    expected_grad = torch.zeros_like(out.confidence_pred)
    expected_grad[m] = w * (sig - alpha) / w.sum()  # d BCE/d logit = σ − target
    torch.testing.assert_close(out.confidence_pred.grad, expected_grad, rtol=1e-4, atol=1e-6)


def test_item15_diagnostic_tau_at_least_one_and_bounded():
    for seed in range(5):
        res = compute_dspark_loss(_output(seed=seed))
        tau = float(res.metrics["tau_analytic"])
        assert 1.0 <= tau <= 8.0 and 1.0 <= float(res.metrics["tau_sim"]) <= 8.0
        for k in range(1, 8):
            assert 0.0 <= float(res.metrics[f"accept_rate@{k}"]) <= 1.0
    identical = _output(seed=9, holes=False)
    identical.aligned_target_logits = identical.draft_logits.detach() * 1.0
    res = compute_dspark_loss(identical)
    assert float(res.metrics["tau_analytic"]) == pytest.approx(8.0, abs=1e-4)  # α = 1 everywhere: γ + 1


def test_tau_sim_counts_leading_argmax_hits():
    out = _output(seed=4, holes=False, b=1, a=1)
    logits = torch.full((1, 1, 7, V), -5.0)
    ids = out.target_ids
    for k in range(7):
        logits[0, 0, k, int(ids[0, 0, k]) if k != 3 else (int(ids[0, 0, k]) + 1) % V] = 5.0
    out.draft_logits = logits.requires_grad_()
    res = compute_dspark_loss(out)
    assert float(res.metrics["tau_sim"]) == pytest.approx(4.0)  # slots 0..2 right, slot 3 wrong: 3 + 1
    assert float(res.metrics["accuracy"]) == pytest.approx(6 / 7)


@pytest.mark.parametrize("chunk", [1, 5, 128])
def test_chunking_does_not_change_anything(chunk):
    out = _output(seed=5)
    ref = compute_dspark_loss(out, chunk_size=1000)
    ref.loss.backward()
    g_ref = out.draft_logits.grad.clone()
    out.draft_logits.grad = None
    res = compute_dspark_loss(out, chunk_size=chunk)
    res.loss.backward()
    torch.testing.assert_close(res.loss, ref.loss)
    torch.testing.assert_close(out.draft_logits.grad, g_ref)


def _fused_inputs(seed=0, m=23, h=8, r=5):
    g = torch.Generator().manual_seed(seed)
    return dict(hidden=torch.randn(m, h, generator=g, requires_grad=True),
                phi=torch.randn(m, r, generator=g, requires_grad=True),
                w=torch.randn(V, h, generator=g, requires_grad=True),
                w2=torch.randn(V, r, generator=g, requires_grad=True),
                th=torch.randn(m, h, generator=g), ids=torch.randint(0, V, (m,), generator=g),
                cce=torch.rand(m, generator=g), cl1=torch.rand(m, generator=g))


@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_fused_slot_loss_matches_autograd(chunk):
    x = _fused_inputs()
    total, ce, l1, pred = fused_slot_loss(x["hidden"], x["ids"], x["w"], phi=x["phi"], w2=x["w2"],
                                          teacher_hidden=x["th"], teacher_weight=x["w"].detach() * 0.5,
                                          ce_coef=x["cce"], l1_coef=x["cl1"], chunk_size=chunk)
    (2.5 * total).backward()
    got = [x[k].grad.clone() for k in ("hidden", "phi", "w", "w2")]
    for k in ("hidden", "phi", "w", "w2"):
        x[k].grad = None
    z = x["hidden"] @ x["w"].t() + x["phi"] @ x["w2"].t()
    logp = torch.log_softmax(z, -1)
    ref_ce = F.nll_loss(logp, x["ids"], reduction="none")
    ref_l1 = (logp.exp() - torch.softmax(x["th"] @ (x["w"].detach() * 0.5).t(), -1)).abs().sum(-1)
    ref = (x["cce"] * ref_ce).sum() + (x["cl1"] * ref_l1).sum()
    (2.5 * ref).backward()
    torch.testing.assert_close(total, ref)
    torch.testing.assert_close(ce, ref_ce.detach())
    torch.testing.assert_close(l1, ref_l1.detach())
    assert torch.equal(pred, z.argmax(-1))
    for a, k in zip(got, ("hidden", "phi", "w", "w2")):
        torch.testing.assert_close(a, x[k].grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("chunk", [3, 64])
def test_shared_teacher_rows_equal_gathered_rows(chunk):
    """teacher_index (overlapping blocks share target positions) == the gathered per-slot teacher rows."""
    x = _fused_inputs(m=30)
    g = torch.Generator().manual_seed(7)
    source = torch.randn(12, 8, generator=g)
    index = torch.randint(0, 12, (30,), generator=g)
    common = dict(phi=x["phi"], w2=x["w2"], ce_coef=x["cce"], l1_coef=x["cl1"], chunk_size=chunk)
    a = fused_slot_loss(x["hidden"], x["ids"], x["w"], teacher_hidden=source[index], **common)
    (a[0]).backward()
    ga = x["hidden"].grad.clone()
    x["hidden"].grad = None
    b = fused_slot_loss(x["hidden"], x["ids"], x["w"], teacher_hidden=source, teacher_index=index, **common)
    b[0].backward()
    torch.testing.assert_close(b[0], a[0])
    torch.testing.assert_close(b[2], a[2])
    torch.testing.assert_close(x["hidden"].grad, ga)


def test_fused_slot_loss_skips_frozen_weights_and_rejects_bad_args():
    x = _fused_inputs()
    w = x["w"].detach()
    total, *_ = fused_slot_loss(x["hidden"], x["ids"], w, ce_coef=x["cce"], chunk_size=7)
    total.backward()
    assert x["hidden"].grad is not None and w.grad is None
    with pytest.raises(ValueError, match="phi and w2"):
        fused_slot_loss(x["hidden"], x["ids"], w, phi=x["phi"], ce_coef=x["cce"])
    with pytest.raises(ValueError, match="chunk_size"):
        fused_slot_loss(x["hidden"], x["ids"], w, ce_coef=x["cce"], chunk_size=0)


def test_missing_teacher_is_an_error():
    out = _output()
    out.aligned_target_logits = None
    with pytest.raises(ValueError, match="aligned_target_logits"):
        compute_dspark_loss(out)
    res = compute_dspark_loss(out, l1_loss_alpha=0.0, confidence_head_alpha=0.0)  # CE-only (DFlash-style)
    assert "tv_loss" not in res.metrics and float(res.loss.detach()) > 0


def test_no_supervised_slot_gives_a_connected_zero_loss():
    out = _output()
    out.eval_mask = torch.zeros_like(out.eval_mask)
    res = compute_dspark_loss(out)
    assert float(res.loss.detach()) == 0.0 and res.num_tokens == 0
    res.loss.backward()
    assert out.draft_logits.grad is not None and torch.count_nonzero(out.draft_logits.grad) == 0


# -- data parallelism ----------------------------------------------------------------------------------------

def _with_shared(out, bias, shift):
    """Logits/confidences that depend on parameters shared by all ranks (what DDP synchronises)."""
    return DSparkForwardOutput(draft_logits=out.draft_logits.detach() + bias, target_ids=out.target_ids,
                               eval_mask=out.eval_mask, block_keep_mask=out.block_keep_mask,
                               confidence_pred=out.confidence_pred.detach() + shift,
                               aligned_target_logits=out.aligned_target_logits)


_DP_WORKER = """
import sys, torch, torch.distributed as dist
from draftsmith_dspark.anchors import DSparkForwardOutput
from draftsmith_dspark.loss import compute_dspark_loss
rank, world, init_file, work = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=world)
part = torch.load(f"{work}/part{rank}.pt")
bias, shift = torch.zeros(part["draft_logits"].shape[-1], requires_grad=True), torch.zeros((), requires_grad=True)
out = DSparkForwardOutput(draft_logits=part["draft_logits"] + bias, target_ids=part["target_ids"],
                          eval_mask=part["eval_mask"], block_keep_mask=part["block_keep_mask"],
                          confidence_pred=part["confidence_pred"] + shift,
                          aligned_target_logits=part["aligned_target_logits"])
compute_dspark_loss(out).loss.backward()
grads = [bias.grad, shift.grad]
for g in grads:  # what DDP does: average the gradients over ranks
    dist.all_reduce(g)
    g /= world
torch.save(grads, f"{work}/grads{rank}.pt")

# copy_full_tensor across sharding: a sharded target weight into a plain draft, a plain one into a sharded draft
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
from draftsmith.nn.weights import copy_full_tensor
mesh = init_device_mesh("cpu", (world,))
full = torch.arange(24.0).view(6, 4)
sharded = distribute_tensor(full, mesh, [Shard(0)])
plain = torch.zeros(6, 4)
copy_full_tensor(plain, sharded)
dst = distribute_tensor(torch.zeros(6, 4), mesh, [Shard(0)])
copy_full_tensor(dst, full * 2)
assert torch.equal(plain, full) and torch.equal(dst.full_tensor(), full * 2)
assert torch.equal(dst.to_local(), (full * 2)[rank * 3:(rank + 1) * 3])
dist.destroy_process_group()
"""


def test_global_denominators_under_data_parallelism(tmp_path):
    """Two ranks with different numbers of supervised slots: the DDP-averaged gradient of the per-rank losses
    equals the gradient of one loss over the union (each slot weighs the same wherever it lives). The same
    two-process group checks the DTensor-aware copy of the target embedding/head."""
    parts = [_output(seed=11, b=1, a=3), _output(seed=12, b=2, a=3)]
    assert int(parts[0].eval_mask.sum()) != int(parts[1].eval_mask.sum())
    bias, shift = torch.zeros(V, requires_grad=True), torch.zeros((), requires_grad=True)
    union = [_with_shared(p, bias, shift) for p in parts]
    ref = compute_dspark_loss(DSparkForwardOutput(
        draft_logits=torch.cat([u.draft_logits for u in union]), target_ids=torch.cat([u.target_ids for u in union]),
        eval_mask=torch.cat([u.eval_mask for u in union]), block_keep_mask=torch.cat([u.block_keep_mask for u in union]),
        confidence_pred=torch.cat([u.confidence_pred for u in union]),
        aligned_target_logits=torch.cat([u.aligned_target_logits for u in union])))
    ref.loss.backward()
    for rank, p in enumerate(parts):
        torch.save({k: getattr(p, k).detach() for k in ("draft_logits", "target_ids", "eval_mask", "block_keep_mask",
                                                         "confidence_pred", "aligned_target_logits")},
                   tmp_path / f"part{rank}.pt")
    # two plain processes (a gloo group of 2) importing only torch + the loss module
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", _DP_WORKER, str(r), "2", str(tmp_path / "init"), str(tmp_path)],
                              stderr=subprocess.PIPE, text=True, env=env) for r in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    for rank in range(2):
        g_bias, g_shift = torch.load(tmp_path / f"grads{rank}.pt")
        torch.testing.assert_close(g_bias, bias.grad, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(g_shift, shift.grad, rtol=1e-5, atol=1e-7)
