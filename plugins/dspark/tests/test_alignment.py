"""methods.md §6 items 11–13 and 17: anchor candidates/sampling, eval_mask, decay weights, sample-from-anchor
alignment (labels, teacher positions, Markov previous tokens)."""

from __future__ import annotations

import pytest
import torch

from draftsmith.nn.documents import packed_document_ids
from draftsmith.target import run_target
from draftsmith_dspark.anchors import align_blocks, anchor_candidates, sample_block_anchors, slot_decay_weights
from draftsmith_dspark.loss import loss_weights


def test_item11_candidates():
    lm = torch.tensor([[1, 1, 0, 1, 1, 1]])
    assert anchor_candidates(lm).tolist() == [[True, False, False, True, True]]


@pytest.mark.parametrize("num_anchors", [1, 2, 3, 5, 9])
def test_item11_sampling_shape_keep_and_order(num_anchors):
    lm = torch.tensor([[1, 1, 0, 1, 1, 1], [0, 0, 0, 0, 1, 0], [1, 1, 1, 1, 1, 1]])
    valid = anchor_candidates(lm)
    for seed in range(20):
        anchors, keep = sample_block_anchors(lm, num_anchors, torch.Generator().manual_seed(seed))
        assert anchors.shape == keep.shape == (3, num_anchors)  # width is always num_anchors
        for b in range(3):
            n_keep = min(int(valid[b].sum()), num_anchors)
            assert keep[b].tolist() == [True] * n_keep + [False] * (num_anchors - n_keep)
            kept = anchors[b, :n_keep].tolist()
            assert kept == sorted(set(kept))  # strictly increasing
            assert all(valid[b, a] for a in kept)
            assert anchors[b, n_keep:].tolist() == [0] * (num_anchors - n_keep)


def test_item11_sampling_is_uniform_without_replacement():
    lm = torch.ones(1, 11, dtype=torch.long)  # 10 candidates, pick 3
    counts = torch.zeros(10)
    g = torch.Generator().manual_seed(0)
    for _ in range(3000):
        anchors, keep = sample_block_anchors(lm, 3, g)
        assert keep.all() and len(set(anchors[0].tolist())) == 3
        counts[anchors[0]] += 1
    assert torch.allclose(counts / 3000, torch.full((10,), 0.3), atol=0.04)


def _align(loss_mask, anchor, gamma=7):
    ids = torch.arange(100, 100 + loss_mask.shape[1])[None]
    anchors = torch.tensor([[anchor]])
    return align_blocks(ids, loss_mask, anchors, torch.ones_like(anchors, dtype=torch.bool), gamma), ids


def test_item12_eval_mask_prefix():
    lm = torch.ones(1, 10, dtype=torch.long)
    al, _ = _align(lm, 6)  # labels 7..13, S = 10
    assert al.eval_mask[0, 0].int().tolist() == [1, 1, 1, 0, 0, 0, 0]
    lm[0, 8] = 0  # a hole at label 8 stops the prefix (cumprod)
    al, _ = _align(lm, 6)
    assert al.eval_mask[0, 0].int().tolist() == [1, 0, 0, 0, 0, 0, 0]
    lm = torch.ones(1, 20, dtype=torch.long)
    lm[0, 12] = 0  # a hole later re-opened still ends the prefix
    al, _ = _align(lm, 6)
    assert al.eval_mask[0, 0].int().tolist() == [1, 1, 1, 1, 1, 0, 0]


def test_unkept_blocks_have_no_supervision_and_safe_indices():
    ids = torch.arange(10)[None] + 50
    al = align_blocks(ids, torch.ones_like(ids), torch.tensor([[3, 0]]), torch.tensor([[True, False]]), 4)
    assert al.eval_mask[0, 1].tolist() == [False] * 4
    assert al.label_positions[0, 1].tolist() == [0] * 4
    assert al.eval_mask[0, 0].all()


def test_item13_decay_weights():
    w = slot_decay_weights(7, 4.0, dtype=torch.float64)
    expected = [1, 0.7788, 0.6065, 0.4724, 0.3679, 0.2865, 0.2231]
    assert torch.allclose(w, torch.tensor(expected, dtype=torch.float64), atol=5e-5)
    assert float(w.sum()) == pytest.approx(3.735212, abs=1e-6)
    assert torch.equal(slot_decay_weights(7, None), torch.ones(7))
    full = loss_weights(torch.ones(1, 1, 7, dtype=torch.bool), 4.0)
    assert float(full.local_den) == pytest.approx(3.735212, abs=1e-5)
    part = loss_weights(torch.tensor([[[1, 1, 1, 0, 0, 0, 0]]], dtype=torch.bool), 4.0)
    assert float(part.local_den) == pytest.approx(1 + 0.778801 + 0.606531, abs=1e-5)
    with pytest.raises(ValueError, match="loss_decay_gamma"):
        slot_decay_weights(7, -1.0)


def test_item17_sample_from_anchor_alignment(tiny):
    """Slot k label = input_ids[a+k+1]; teacher logits = target logits at position a+k; prev = x_{a+k}."""
    tc = tiny.target_config()
    target = tiny.make_target(tc)
    draft = tiny.make_draft(tc, num_anchors=3, block_size=4)
    draft.copy_embeddings_from_target(target.get_input_embeddings(), target.get_output_embeddings())
    batch = tiny.make_batch(batch=2, length=16)
    ids = batch["input_ids"]
    feats, out = run_target(target, draft_target_request(draft), ids)
    anchors = torch.tensor([[5, 9, 13], [6, 7, 11]])
    res = draft(ids, feats.stacked(draft.config.target_layer_ids), batch["loss_mask"], feats.final_hidden,
                anchors=anchors)
    hid = draft.forward_hidden(ids, feats.stacked(draft.config.target_layer_ids), batch["loss_mask"],
                               feats.final_hidden, anchors=anchors)
    target_logits = out.logits
    for b in range(2):
        for i, a in enumerate(anchors[b].tolist()):
            for k in range(4):
                if a + k + 1 < 16:
                    assert res.eval_mask[b, i, k]
                    assert int(res.target_ids[b, i, k]) == int(ids[b, a + k + 1])
                    torch.testing.assert_close(res.aligned_target_logits[b, i, k], target_logits[b, a + k])
                    assert int(hid.prev_ids[b, i, k]) == int(ids[b, a + k])
                else:
                    assert not res.eval_mask[b, i, k]
    # the Markov bias is W2·W1[prev] with exactly those previous tokens
    bias = res.draft_logits - draft.lm_head(hid.hidden)
    w1, w2 = draft.markov_head.markov_w1.weight, draft.markov_head.markov_w2.weight
    torch.testing.assert_close(bias, w1[hid.prev_ids] @ w2.t(), rtol=1e-4, atol=1e-5)


def draft_target_request(draft):
    from draftsmith.method import TargetRequest

    return TargetRequest(layer_ids=tuple(draft.config.target_layer_ids), final_hidden=True)


def test_packed_documents_bound_anchors_and_supervision():
    pos = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5]])
    docs = packed_document_ids(pos)
    assert docs.tolist() == [[0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1]]  # core numbers documents from 0 (only == matters)
    assert packed_document_ids(torch.arange(11)[None]) is None
    lm = torch.ones_like(pos)
    cand = anchor_candidates(lm, docs)
    assert cand[0, 4].item() is False and cand[0, :4].all() and cand[0, 5:].all()
    ids = torch.arange(11)[None]
    al = align_blocks(ids, lm, torch.tensor([[2]]), torch.tensor([[True]]), 4, doc_ids=docs)
    assert al.eval_mask[0, 0].int().tolist() == [1, 1, 0, 0]  # labels 3, 4 | 5 starts document 2
