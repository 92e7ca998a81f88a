"""EAGLE objectives: label alignment, masks, weights, normalisation, metrics, vocabulary preparation."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from draftsmith.errors import ConfigError
from draftsmith.method import TargetFeatures, TargetHeads, TargetRequest
from draftsmith_eagle.loss import (chain_counts, prediction_validity, shift_left, simulated_tau,
                                     soft_cross_entropy, step_weights)
from draftsmith_eagle.objective import Eagle1Objective, Eagle3Objective


def test_step_weights():
    raw = sum(0.8 ** i for i in range(7))
    assert raw == pytest.approx(3.951424)
    w = step_weights(7)
    assert sum(w) == pytest.approx(1.0) and w[0] == pytest.approx(1 / 3.951424)
    assert w[3] / w[2] == pytest.approx(0.8)


def test_prediction_validity_alignment():
    # slot t at step k predicts x_{t+k+2}: supervised iff that token is (loss_mask), real, in range, same document
    attn = torch.tensor([[1, 1, 1, 1, 1, 1, 0]]).bool()
    loss = torch.tensor([[0, 0, 1, 1, 0, 1, 0]]).bool()
    v = prediction_validity(attn, loss, None, steps=2)
    assert v[0, 0].tolist() == [True, True, False, True, False, False, False]
    assert v[1, 0].tolist() == [True, False, True, False, False, False, False]
    pos = torch.tensor([[0, 1, 2, 0, 1, 2, 3]])  # a second document starts at index 3
    v = prediction_validity(torch.ones_like(attn), torch.ones_like(loss), pos, steps=1)
    assert v[0, 0].tolist() == [True, False, False, True, True, False, False]
    assert shift_left(torch.tensor([[1, 2, 3]]), 2).tolist() == [[3, 0, 0]]


def test_tau_from_chains_hand_values():
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]]).bool()
    correct = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 0], [1, 0, 0, 0]]).bool()
    hits, chains = chain_counts(correct, valid)
    assert hits.tolist() == [3, 1, 1] and chains.tolist() == [4, 3, 2]
    assert simulated_tau(hits, chains) == pytest.approx(1 + 3 / 4 + 1 / 3 + 1 / 2)
    # a supervision gap drops the chain from deeper denominators; an out-of-vocab target (valid, never correct)
    # breaks it
    hits, chains = chain_counts(torch.tensor([[1], [0], [1]]).bool(), torch.tensor([[1], [0], [1]]).bool())
    assert (hits.tolist(), chains.tolist(), simulated_tau(hits, chains)) == ([1, 0, 0], [1, 0, 0], 2.0)
    hits, chains = chain_counts(torch.tensor([[1], [0]]).bool(), torch.tensor([[1], [1]]).bool())
    assert simulated_tau(hits, chains) == 2.0


def test_soft_cross_entropy():
    z = torch.randn(5, 11, generator=torch.Generator().manual_seed(0))
    p = z.softmax(-1)
    assert_close(soft_cross_entropy(z, p), -(p * p.log()).sum(-1))  # = the target's entropy at equality
    assert soft_cross_entropy(z * 1e4, (z * 1e4).softmax(-1)).abs().max() < 1e-3  # peaked target: 0


def _heads(scale=8.0, vocab=128, hidden=64, seed=0):
    torch.manual_seed(seed)
    head = nn.Linear(hidden, vocab, bias=False)
    with torch.no_grad():
        head.weight.mul_(scale)
    return TargetHeads(nn.Embedding(vocab, hidden), head, vocab, 0, (2,))


def _features(draft_ids, b=2, t=16, hidden=64, seed=5):
    g = torch.Generator().manual_seed(seed)
    return TargetFeatures({i: torch.randn(b, t, hidden, generator=g) for i in draft_ids},
                          torch.randn(b, t, hidden, generator=g))


def naive_eagle3(objective, batch, feats):
    """Loss, per-step accuracy and tau written slot by slot from the method's definition."""
    model, heads, k_steps = objective.model, objective.heads, objective.ttt_steps
    ids, attn, lm = batch["input_ids"], batch["attention_mask"].bool(), batch["loss_mask"].bool()
    b_, t_ = ids.shape
    logits_t = heads.lm_head(feats.final_hidden)
    top, sel = logits_t.argmax(-1), model.selected_token_ids()
    probs = logits_t[..., sel].softmax(-1)
    aux = torch.cat([feats.hidden_states[i] for i in model.config.target_layer_ids], -1)
    hidden, cache = model.project_hidden_states(aux), model.new_ttt_cache()
    loss, weights = 0.0, [0.8 ** k for k in range(k_steps)]
    correct = torch.zeros(k_steps, b_, t_, dtype=torch.bool)
    valid = torch.zeros_like(correct)
    accs = []
    for k in range(k_steps):
        hidden = model(shift_left(ids, k + 1), hidden, attention_mask=batch["attention_mask"], cache_hidden=cache)
        logits = model.compute_logits(hidden)
        num, den, hit = 0.0, 0, 0
        for b in range(b_):
            for t in range(t_):
                j = t + k + 2  # the predicted token; its target distribution is the target's output at j-1
                if j >= t_ or not (attn[b, t] and attn[b, j] and lm[b, j]):
                    continue
                valid[k, b, t] = True
                if not model.t2d[top[b, j - 1]]:
                    continue
                num = num - (probs[b, j - 1] * F.log_softmax(logits[b, t], -1)).sum()
                den += 1
                correct[k, b, t] = sel[logits[b, t].argmax()] == top[b, j - 1]
                hit += int(correct[k, b, t])
        loss = loss + weights[k] * num / max(den, 1)
        accs.append(hit / max(den, 1))
    hits, chains = chain_counts(correct.flatten(1), valid.flatten(1))
    return loss / sum(weights), accs, simulated_tau(hits, chains)


@pytest.mark.parametrize("pad", [0, 4])
def test_eagle3_objective_equals_slot_by_slot_reference(eagle, pad):
    tc = eagle.target_config()
    draft = eagle.make_eagle3(tc, draft_vocab_size=96)
    heads = _heads()
    objective = Eagle3Objective(draft, heads, ttt_steps=3)
    counts = torch.randint(0, 50, (128,), generator=torch.Generator().manual_seed(2))
    objective.prepare(counts)
    assert draft.selected_token_ids()[:3].tolist() == [1, 2, 0]  # bos, eos, pad first
    batch = eagle.make_batch(length=16, pad=pad)
    feats = _features(draft.config.target_layer_ids)
    out = objective(batch, feats)
    loss, accs, tau = naive_eagle3(objective, batch, feats)
    assert_close(out.loss, loss.float(), rtol=1e-5, atol=1e-5)
    for k, a in enumerate(accs):
        assert out.metrics[f"acc_{k}"] == pytest.approx(a)
    assert out.metrics["tau_sim"] == pytest.approx(tau)
    assert out.num_tokens == int(prediction_validity(batch["attention_mask"].bool(), batch["loss_mask"].bool(),
                                                     None, 1).sum())
    assert objective.target_request() == TargetRequest(layer_ids=(1, 3, 4), final_hidden=True)


class OracleDraft(nn.Module):
    """A stand-in EAGLE-3 draft whose step-k "hidden state" is the target's logits ``shift`` positions ahead;
    ``compute_logits`` is the identity. With shift = k + 1 it predicts exactly the target distribution."""

    def __init__(self, logits, steps_ahead):
        super().__init__()
        v = logits.shape[-1]
        self.logits, self.ahead = logits, steps_ahead
        self.config = types.SimpleNamespace(num_aux_hidden_states=1, draft_vocab_size=v, vocab_size=v,
                                            target_layer_ids=[0], bos_token_id=None)
        self.embed_tokens = nn.Embedding(v, 4)
        self.weight = nn.Parameter(torch.ones(()))
        self.compresses_vocab = False

    def copy_embeddings_from_target(self, e): pass
    def freeze_embeddings(self): pass
    def project_hidden_states(self, aux): return aux
    def new_ttt_cache(self): return types.SimpleNamespace(step=0)
    def compute_logits(self, h): return h * self.weight
    def draft_to_target(self, ids): return ids
    def selected_token_ids(self): return torch.arange(self.config.vocab_size)

    def forward(self, input_ids, projected_hidden_states, attention_mask, position_ids, cache_hidden, slots=None):
        k = cache_hidden.step
        cache_hidden.step += 1
        return shift_left(self.logits, self.ahead(k))


def test_oracle_draft_gives_zero_loss_and_full_acceptance(eagle):
    heads = _heads(scale=1e5)  # peaked target distributions: soft CE at equality ~ 0
    feats = _features([0])
    target_logits = heads.lm_head(feats.final_hidden).detach()
    batch = eagle.make_batch(length=16, vocab=128)
    batch["loss_mask"][:, :2] = 0
    good = Eagle3Objective(OracleDraft(target_logits, lambda k: k + 1), heads, ttt_steps=4)
    out = good(batch, feats)
    assert out.loss.item() < 1e-3
    assert out.metrics["accuracy"] == 1.0 and out.metrics["tau_sim"] == pytest.approx(5.0)
    off_by_one = Eagle3Objective(OracleDraft(target_logits, lambda k: k), heads, ttt_steps=4)
    bad = off_by_one(batch, feats)
    assert bad.loss.item() > 100 and bad.metrics["accuracy"] < 0.2 and bad.metrics["tau_sim"] < 1.3


def test_normalisation_is_per_supervised_prediction(eagle):
    tc = eagle.target_config()
    draft = eagle.make_eagle3(tc, draft_vocab_size=128)
    objective = Eagle3Objective(draft, _heads(), ttt_steps=2)
    batch = eagle.make_batch(batch=1, length=16)
    feats = _features(draft.config.target_layer_ids, b=1)
    single = objective(batch, feats).loss
    doubled = {k: torch.cat([v, v]) for k, v in batch.items()}
    feats2 = TargetFeatures({i: torch.cat([h, h]) for i, h in feats.hidden_states.items()},
                            torch.cat([feats.final_hidden] * 2))
    assert_close(objective(doubled, feats2).loss, single)
    padded = {k: torch.cat([v, torch.zeros_like(v)]) for k, v in batch.items()}  # an all-padding row adds nothing
    assert_close(objective(padded, feats2).loss, single)


def test_eagle3_options_are_validated(eagle):
    tc = eagle.target_config()
    draft = eagle.make_eagle3(tc)
    heads = _heads()
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="ttt_steps"):
            Eagle3Objective(draft, heads, ttt_steps=bad)
    with pytest.raises(ConfigError, match="num_aux_layers"):
        Eagle3Objective(draft, heads, num_aux_layers=4)
    with pytest.raises(ConfigError, match="draft_vocab_size"):
        Eagle3Objective(draft, heads, draft_vocab_size=32)
    with pytest.raises(ConfigError, match="unknown option"):
        Eagle3Objective(draft, heads, bogus=1)
    objective = Eagle3Objective(draft, heads, num_aux_layers=3, draft_vocab_size=64)
    with pytest.raises(ConfigError, match="token_counts"):
        objective.prepare(torch.ones(10))


def test_eagle1_objective_equals_reference(eagle):
    tc = eagle.target_config()
    draft = eagle.make_eagle1(tc)
    heads = _heads()
    objective = Eagle1Objective(draft, heads, feature_noise=0.0)
    batch = eagle.make_batch(length=16, pad=3)
    feats = _features([])
    out = objective(batch, feats)
    f = feats.final_hidden
    pred = draft(shift_left(batch["input_ids"], 1), f, attention_mask=batch["attention_mask"])
    valid = prediction_validity(batch["attention_mask"].bool(), batch["loss_mask"].bool(), None, 1)[0]
    target = shift_left(f, 1)[valid]
    p = pred[valid]
    hidden_loss = F.smooth_l1_loss(p, target, reduction="none").mean(-1).mean()
    t_logits = heads.lm_head(target)
    token_loss = -(t_logits.softmax(-1) * F.log_softmax(heads.lm_head(p), -1)).sum(-1).mean()
    assert_close(out.loss, 1.0 * hidden_loss + 0.1 * token_loss, rtol=1e-5, atol=1e-6)
    acc = (heads.lm_head(p).argmax(-1) == t_logits.argmax(-1)).float().mean().item()
    assert out.metrics["accuracy"] == pytest.approx(acc)
    assert objective.target_request() == TargetRequest(layer_ids=(), final_hidden=True)
    # uniform feature noise only while training
    noisy = Eagle1Objective(draft, heads, feature_noise=0.5)
    noisy.eval()
    assert_close(noisy(batch, feats).loss, out.loss)
    noisy.train()
    assert not torch.allclose(noisy(batch, feats).loss, out.loss)


def test_skipping_dead_chains_changes_nothing(eagle):
    """Chains without a supervised prediction left are not computed after step 0: same loss, gradients, metrics."""
    tc = eagle.target_config()
    draft = eagle.make_eagle3(tc, draft_vocab_size=48, num_hidden_layers=2)
    heads = _heads()
    batch = eagle.make_batch(length=20, pad=5, prompt=4)
    batch["loss_mask"][0, 12:15] = 0  # a gap in supervision
    feats = _features(draft.config.target_layer_ids, t=20)
    results = []
    for skip in (True, False):
        objective = Eagle3Objective(draft, heads, ttt_steps=5, skip_dead_chains=skip)
        objective.prepare(torch.arange(128))
        out = objective(batch, feats)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in draft.named_parameters() if p.grad is not None}
        draft.zero_grad()
        results.append((out, grads))
    (fast, g_fast), (dense, g_dense) = results
    assert_close(fast.loss, dense.loss, rtol=1e-5, atol=1e-6)
    assert fast.metrics == pytest.approx(dense.metrics)
    assert g_fast.keys() == g_dense.keys()
    for name in g_fast:
        assert_close(g_fast[name], g_dense[name], rtol=1e-4, atol=1e-6)
    live = objective._live_chains([torch.tensor([3, 5]), torch.tensor([5]), torch.tensor([], dtype=torch.long)],
                                  1, 8)
    assert live[0] is None or live[0].tolist() == [[3, 5]]
    assert live[1].tolist() == [[5]] and live[2].shape == (1, 0)


@pytest.mark.parametrize("method", ["eagle3", "eagle1"])
def test_packed_row_equals_separate_rows(eagle, method):
    """Two documents packed in one row (position_ids restart) == the same documents as two padded rows."""
    tc = eagle.target_config()
    heads = _heads()
    if method == "eagle3":
        draft = eagle.make_eagle3(tc, draft_vocab_size=96)
        objective = Eagle3Objective(draft, heads, ttt_steps=3)
        objective.prepare(torch.arange(128))
    else:
        objective = Eagle1Objective(eagle.make_eagle1(tc), heads, feature_noise=0.0)
    request = objective.target_request()
    g = torch.Generator().manual_seed(11)
    lengths = (9, 7)
    docs = [torch.randint(3, 128, (n,), generator=g) for n in lengths]
    masks = [torch.tensor([0, 0] + [1] * (n - 2)) for n in lengths]
    feats = [{key: torch.randn(n, 64, generator=g) for key in [*request.layer_ids, "final"]} for n in lengths]
    packed = {"input_ids": torch.cat(docs)[None], "attention_mask": torch.ones(1, sum(lengths), dtype=torch.long),
              "loss_mask": torch.cat(masks)[None],
              "position_ids": torch.cat([torch.arange(n) for n in lengths])[None]}
    packed_feats = TargetFeatures({i: torch.cat([f[i] for f in feats])[None] for i in request.layer_ids},
                                  torch.cat([f["final"] for f in feats])[None])

    def pad(x, n=9):
        return torch.cat([x, x.new_zeros(n - x.shape[0], *x.shape[1:])])

    rows = {"input_ids": torch.stack([pad(d) for d in docs]),
            "attention_mask": torch.stack([pad(torch.ones(n, dtype=torch.long)) for n in lengths]),
            "loss_mask": torch.stack([pad(m) for m in masks])}
    row_feats = TargetFeatures({i: torch.stack([pad(f[i]) for f in feats]) for i in request.layer_ids},
                               torch.stack([pad(f["final"]) for f in feats]))
    a, b = objective(packed, packed_feats), objective(rows, row_feats)
    assert_close(a.loss, b.loss, rtol=1e-5, atol=1e-6)
    assert a.metrics == pytest.approx(b.metrics) and a.num_tokens == b.num_tokens
