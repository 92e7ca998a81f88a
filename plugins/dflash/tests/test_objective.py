"""DFlashObjective: the loss against an explicit reference, metrics, seeded anchors, KD, empty batches, and
forward + backward for every registered architecture."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import draftsmith
from draftsmith.errors import ConfigError
from draftsmith.target import run_target
from draftsmith_dflash.objective import DFlashObjective
from draftsmith_dflash.registry import ARCHITECTURES


def _run(s, batch, **options):
    objective = DFlashObjective(s.draft, s.heads, **options)
    feats, _ = run_target(s.target, objective.target_request(), batch["input_ids"])
    return objective, feats, objective(batch, feats)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_forward_backward_for_every_registered_architecture(dflash, arch):
    tc = dflash.target_config(arch, num_layers=4)
    spec = draftsmith.resolve_draft_spec("dflash", tc.architectures)
    draft = spec.build(tc, mask_token_id=127, block_size=4, num_draft_layers=2)
    s = dflash.make_setup(arch)
    s.draft = draft
    batch = dflash.make_batch(pad=3)
    _, _, out = _run(s, batch, num_anchors=6)
    assert torch.isfinite(out.loss) and out.loss.requires_grad
    out.loss.backward()
    grads = {n: p.grad for n, p in draft.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["fc.weight"].abs().sum() > 0 and grads["layers.0.self_attn.k_proj.weight"].abs().sum() > 0
    assert s.heads.lm_head.weight.grad is None and s.heads.embed_tokens.weight.grad is None  # frozen target
    assert set(out.metrics) >= {"loss", "ce", "accuracy", "accept_len", "tau_sim", "num_blocks"}
    assert 1.0 <= float(out.metrics["accept_len"]) <= 4.0 and 0 <= float(out.metrics["accuracy"]) <= 1


@pytest.mark.parametrize("first", [1.0, 3.0])
def test_loss_equals_explicit_per_block_reference(dflash, first):
    """Recompute the objective's loss block by block: each block alone, context truncated to its anchor; slot 1's
    weight times ``first_slot_weight``."""
    s = dflash.make_setup(block_size=4)
    s.draft.eval()
    batch = dflash.make_batch(batch=2, length=16, prompt=4, pad=2)
    objective, feats, out = _run(s, batch, num_anchors=5, loss_decay_gamma=2.0, seed=3, first_slot_weight=first)
    # replay the objective's anchor draw with the same seed
    again = DFlashObjective(s.draft, s.heads, num_anchors=5, loss_decay_gamma=2.0, seed=3)
    from draftsmith_dflash.anchors import anchor_candidates, sample_anchors

    lm = batch["loss_mask"].bool() & batch["attention_mask"].bool()
    anchors, keep = sample_anchors(anchor_candidates(lm, 4), 5, again.anchor_stream.next_generator())
    ids, layers = batch["input_ids"], s.draft.target_layer_ids
    num, den, hits, total, accept = 0.0, 0.0, 0, 0, []
    for b in range(2):
        for a in anchors[b][keep[b]].tolist():
            block = torch.tensor([[int(ids[b, a])] + [127] * 3])
            ctx = torch.cat([feats.hidden_states[i][b:b + 1, :a] for i in layers], -1)
            with torch.no_grad():
                h = s.draft(s.draft.embed_tokens(block), torch.arange(a, a + 4)[None], ctx)
            logits = s.draft.compute_logits(h)[0]
            run, broken = 0, False
            for k in range(1, 4):
                if a + k >= 16 or not lm[b, a + k]:
                    continue
                w = math.exp(-(k - 1) / 2.0) * (first if k == 1 else 1.0)
                num += w * float(F.cross_entropy(logits[k:k + 1], ids[b, a + k:a + k + 1]))
                den += w
                ok = int(logits[k].argmax()) == int(ids[b, a + k])
                hits, total = hits + ok, total + 1
                broken = broken or not ok
                run += 0 if broken else 1
            accept.append(run + 1)
    torch.testing.assert_close(out.loss, torch.tensor(num / den), rtol=1e-5, atol=1e-6)
    assert out.num_tokens == total
    assert math.isclose(float(out.metrics["accuracy"]), hits / total, rel_tol=1e-6)
    assert math.isclose(float(out.metrics["accept_len"]), sum(accept) / len(accept), rel_tol=1e-6)


def test_attention_backends_give_the_same_loss_and_gradients(dflash):
    s = dflash.make_setup(block_size=4)
    batch = dflash.make_batch(batch=2, length=24, pad=3)
    results = {}
    for backend in ("sdpa", "grouped", "blockwise"):
        s.draft.zero_grad()
        _, _, out = _run(s, batch, num_anchors=10, attention_backend=backend)
        out.loss.backward()
        results[backend] = (out.loss.detach(), {n: p.grad.clone() for n, p in s.draft.named_parameters()})
    ref_loss, ref_grads = results["sdpa"]
    for backend in ("grouped", "blockwise"):
        loss, grads = results[backend]
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        for name, g in grads.items():
            torch.testing.assert_close(g, ref_grads[name], rtol=1e-4, atol=1e-5)


def test_uniform_ce_gives_weighted_mean_equal_to_it(dflash):
    s = dflash.make_setup()
    with torch.no_grad():
        s.heads.lm_head.weight.zero_()  # uniform logits: CE = log V at every slot
    _, _, out = _run(s, dflash.make_batch(), num_anchors=8)
    assert math.isclose(float(out.loss.detach()), math.log(128), rel_tol=1e-6)


def test_anchors_are_seeded_and_reproducible(dflash):
    s = dflash.make_setup()
    batch = dflash.make_batch(length=30)
    first = [float(_run(s, batch, num_anchors=4, seed=1)[2].loss.detach()) for _ in range(2)]
    other = float(_run(s, batch, num_anchors=4, seed=2)[2].loss.detach())
    assert first[0] == first[1] and other != first[0]
    objective, feats, _ = _run(s, batch, num_anchors=4, seed=1)
    state = objective.run_state()
    assert state == {"calls": 1}
    a = float(objective(batch, feats).loss.detach())
    objective.load_run_state(state)
    assert float(objective(batch, feats).loss.detach()) == a
    from draftsmith.train.distributed import rank

    rank1 = DFlashObjective(s.draft, s.heads, num_anchors=4, seed=1)
    rank1.anchor_stream.rank = 1  # another data-parallel rank draws other anchors from the same state
    rank1.load_run_state(state)
    assert float(rank1(batch, feats).loss.detach()) != a
    assert rank() == 0


def test_kd_term_off_by_default_and_zero_against_itself(dflash):
    s = dflash.make_setup()
    batch = dflash.make_batch()
    objective, feats, out = _run(s, batch, num_anchors=4)
    assert not objective.target_request().final_hidden and "kd" not in out.metrics
    objective, feats, out = _run(s, batch, num_anchors=4, kd_weight=0.5, kd_temperature=2.0)
    assert objective.target_request().final_hidden and float(out.metrics["kd"]) > 0
    torch.testing.assert_close(out.loss, out.metrics["ce"] + 0.5 * out.metrics["kd"])
    out.loss.backward()
    assert s.draft.fc.weight.grad.abs().sum() > 0


def test_no_valid_anchor_gives_zero_loss_touching_all_parameters(dflash):
    s = dflash.make_setup()
    batch = dflash.make_batch(length=10)
    batch["loss_mask"].zero_()
    _, _, out = _run(s, batch)
    assert float(out.loss.detach()) == 0.0 and out.num_tokens == 0 and out.metrics["num_blocks"] == 0
    out.loss.backward()
    assert all(p.grad is not None and not p.grad.any() for p in s.draft.parameters())


def test_packed_rows_never_see_other_documents(dflash):
    """Changing document 1 (tokens and target features) must not change the loss of document 2's blocks."""
    from draftsmith.method import TargetFeatures

    s = dflash.make_setup()
    ids = torch.randint(0, 120, (1, 16), generator=torch.Generator().manual_seed(0))
    pos = torch.tensor([list(range(6)) + list(range(10))])
    loss_mask = torch.tensor([[0] * 6 + [1] * 10])
    objective = DFlashObjective(s.draft, s.heads, num_anchors=8)
    feats = {i: torch.randn(1, 16, 64, generator=torch.Generator().manual_seed(i + 5)) for i in (1, 2)}
    losses = []
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed + 10)
        ids2, feats2 = ids.clone(), {i: h.clone() for i, h in feats.items()}
        ids2[0, :6] = torch.randint(0, 120, (6,), generator=g)
        for h in feats2.values():
            h[:, :6] = torch.randn(1, 6, 64, generator=g)
        objective.load_run_state({"calls": 4})
        out = objective({"input_ids": ids2, "loss_mask": loss_mask, "position_ids": pos}, TargetFeatures(feats2))
        losses.append(float(out.loss.detach()))
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
    ids2[0, 9] = (ids2[0, 9] + 1) % 120  # ... while a change inside document 2 does
    objective.load_run_state({"calls": 4})
    assert float(objective({"input_ids": ids2, "loss_mask": loss_mask, "position_ids": pos},
                           TargetFeatures(feats2)).loss.detach()) != pytest.approx(losses[1], rel=1e-6)


@pytest.mark.parametrize("options, match", [
    ({"num_anchors": 0}, "num_anchors"), ({"kd_weight": -1.0}, "kd_weight"),
    ({"block_size": 8}, "disagrees with the draft"), ({"anchors": 3}, "unknown DFlash option"),
    ({"attention_backend": "nope"}, "unknown block attention backend"),
    ({"first_slot_weight": 0.0}, "first_slot_weight"), ({"first_slot_weight": "2"}, "first_slot_weight"),
])
def test_option_validation(dflash, options, match):
    s = dflash.make_setup(block_size=4)
    with pytest.raises((ConfigError, ValueError), match=match):
        objective = DFlashObjective(s.draft, s.heads, **options)
        feats, _ = run_target(s.target, objective.target_request(), dflash.make_batch()["input_ids"])
        objective(dflash.make_batch(), feats)


def test_mask_token_checked_against_the_target_heads(dflash):
    s = dflash.make_setup()
    s.heads.eos_token_ids = (127,)
    with pytest.raises(ConfigError, match="eos"):
        DFlashObjective(s.draft, s.heads)


def test_method_default_options_build_the_objective(dflash):
    s = dflash.make_setup()
    method = draftsmith.get_registry().get_method("dflash")
    objective = method.load_objective()(s.draft, s.heads, **method.default_options)
    assert objective.num_anchors == 512 and objective.target_request().layer_ids == (1, 2)
    assert objective.attention_backend == "auto"
