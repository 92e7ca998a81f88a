"""DFlash alignment invariants: methods.md §6 items 8 (mask), 9 (slots/anchors), 10 (decay), plus the seeded
anchor sampler and the accept-length metric."""

from __future__ import annotations

import math

import pytest
import torch

from draftsmith.nn.documents import document_ids
from draftsmith_dflash.loss import decay_weights
from draftsmith_dflash.anchors import (accept_lengths, anchor_candidates, block_input_ids, block_labels,
                                       sample_anchors)
from draftsmith.nn.block_attention import block_position_ids

DECAY_7 = [1, 0.866878, 0.751477, 0.651439, 0.564718, 0.489542, 0.424373, 0.367879, 0.318907, 0.276453, 0.239651,
           0.207748, 0.180092, 0.156118, 0.135335]
DECAY_4 = [1, 0.778801, 0.606531, 0.472367, 0.367879, 0.286505, 0.223130, 0.173774, 0.135335, 0.105399, 0.082085,
           0.063928, 0.049787, 0.038774, 0.030197]


# ---------------------------------------------------------------------------------------------- item 8

def test_item8_mask_through_the_draft_layout(dflash):
    draft = dflash.make_draft(dflash.target_config(), block_size=4)
    m = draft.block_layout(torch.tensor([[2, 5]]), 8).dense_mask()
    assert m.shape == (1, 1, 8, 16)
    m = m[0, 0]
    assert m[:4, :8].nonzero()[:, 1].unique().tolist() == [0, 1] and m[:4, 8:12].all() and not m[:4, 12:].any()
    assert m[4:, :8].nonzero()[:, 1].unique().tolist() == [0, 1, 2, 3, 4] and m[4:, 12:].all()
    assert not m[4:, 8:12].any()
    assert m.sum(-1).tolist() == [6] * 4 + [9] * 4 and int(m.sum()) == 4 * (6 + 9) == 60
    causal = dflash.make_draft(dflash.target_config(), block_size=4, causal=True)
    mc = causal.block_layout(torch.tensor([[2, 5]]), 8).dense_mask()[0, 0]
    assert mc.sum(-1).tolist() == [2 + k + 1 for k in range(4)] + [5 + k + 1 for k in range(4)]


# ---------------------------------------------------------------------------------------------- item 9

def test_item9_slot_positions_are_anchor_plus_k():
    pos = block_position_ids(torch.tensor([[3, 7]]), 4).view(1, 2, 4)
    assert pos[0, 0].tolist() == [3, 4, 5, 6] and pos[0, 1].tolist() == [7, 8, 9, 10]


def test_item9_full_block_has_b_minus_1_supervised_slots_predicting_anchor_plus_k():
    ids = torch.arange(100, 112).unsqueeze(0)  # token at position p is 100 + p
    loss_mask = torch.ones_like(ids)
    anchors, keep = torch.tensor([[2, 6]]), torch.tensor([[True, True]])
    labels, mask = block_labels(ids, loss_mask, anchors, keep, 4)
    assert labels[0, 0].tolist() == [102, 103, 104, 105]  # slot k predicts y[a + k]
    assert mask.sum(-1).tolist() == [[3, 3]] and not mask[..., 0].any()  # slot 0 (the anchor) unsupervised
    block = block_input_ids(ids, anchors, keep, 4, mask_token_id=99).view(1, 2, 4)
    assert block[0, 0].tolist() == [102, 99, 99, 99] and block[0, 1].tolist() == [106, 99, 99, 99]


def test_item9_anchor_valid_iff_loss_mask_and_block_fits():
    loss_mask = torch.tensor([[1, 1, 0, 1, 1, 1, 1, 1]])
    valid = anchor_candidates(loss_mask, 4)
    s, b = 8, 4
    expected = [bool(loss_mask[0, a]) and a <= s - b for a in range(s)]
    assert valid[0].tolist() == expected == [True, True, False, True, True, False, False, False]


def test_per_slot_mask_not_prefix_and_padding_blocks():
    ids = torch.arange(10).unsqueeze(0)
    loss_mask = torch.tensor([[1, 1, 1, 0, 1, 1, 1, 1, 1, 1]])  # hole at 3
    labels, mask = block_labels(ids, loss_mask, torch.tensor([[1, 0]]), torch.tensor([[True, False]]), 4)
    assert mask[0, 0].tolist() == [False, True, False, True]  # hole masked, later slot still supervised
    assert not mask[0, 1].any()  # padding block
    block = block_input_ids(ids, torch.tensor([[1, 0]]), torch.tensor([[True, False]]), 4, mask_token_id=9)
    assert block[0, 4:].tolist() == [9, 9, 9, 9]


def test_packing_keeps_blocks_and_context_in_their_document():
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5]])
    docs = document_ids(pos)
    assert docs.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1, 1, 1]]
    valid = anchor_candidates(torch.ones_like(pos), 3, docs)
    assert valid[0].tolist() == [True, True, False, False, True, True, True, True, False, False]
    assert block_position_ids(torch.tensor([[5]]), 3, pos).tolist() == [[1, 2, 3]]


# ---------------------------------------------------------------------------------------------- item 10

@pytest.mark.parametrize("gamma, table, total", [(7.0, DECAY_7, 6.630611), (4.0, DECAY_4, 4.414492)])
def test_item10_decay_tables_and_sums(gamma, table, total):
    w = decay_weights(16, gamma)
    assert w[0] == 0  # the anchor slot
    torch.testing.assert_close(w[1:], torch.tensor(table), atol=1e-6, rtol=0)
    assert math.isclose(float(w.sum()), total, abs_tol=1e-5)


def test_uniform_decay_and_bad_gamma():
    assert decay_weights(4, None).tolist() == [0, 1, 1, 1]
    with pytest.raises(ValueError, match="loss_decay_gamma"):
        decay_weights(4, 0.0)


# ---------------------------------------------------------------------------------------------- sampling

def test_sample_anchors_seeded_sorted_valid_and_padded():
    valid = torch.zeros(3, 30, dtype=torch.bool)
    valid[0, 5:25] = True
    valid[1, [3, 9, 11]] = True  # only 3 candidates
    a1, k1 = sample_anchors(valid, 8, torch.Generator().manual_seed(7))
    a2, k2 = sample_anchors(valid, 8, torch.Generator().manual_seed(7))
    assert torch.equal(a1, a2) and torch.equal(k1, k2)  # reproducible
    assert a1.shape == (3, 8)  # N = min(num_anchors, max valid count)
    assert k1.sum(1).tolist() == [8, 3, 0]
    assert a1[1, :3].tolist() == [3, 9, 11] and (a1[1, 3:] == 0).all() and (a1[2] == 0).all()
    kept = a1[0][k1[0]]
    assert (kept[1:] > kept[:-1]).all() and valid[0, kept].all()
    a3, _ = sample_anchors(valid, 8, torch.Generator().manual_seed(8))
    assert not torch.equal(a1[0], a3[0])


def test_sample_anchors_is_uniform_over_candidates():
    valid = torch.zeros(1, 10, dtype=torch.bool)
    valid[0, [1, 4, 6, 8]] = True
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(10)
    for _ in range(2000):
        a, _ = sample_anchors(valid, 2, g)
        counts[a[0]] += 1
    freq = counts[[1, 4, 6, 8]] / 2000  # each candidate chosen with prob 2/4
    assert torch.allclose(freq, torch.full((4,), 0.5), atol=0.05) and counts.sum() == 4000


def test_sample_anchors_width_is_capped_and_empty_batches_give_no_blocks():
    valid = torch.ones(2, 50, dtype=torch.bool)
    anchors, keep = sample_anchors(valid, 16, torch.Generator().manual_seed(0))
    assert anchors.shape == (2, 16) and keep.all()
    anchors, keep = sample_anchors(torch.zeros(2, 5, dtype=torch.bool), 16)
    assert anchors.shape == (2, 0)
    with pytest.raises(ValueError, match="num_anchors"):
        sample_anchors(valid, 0)


# ---------------------------------------------------------------------------------------------- accept_len

def test_accept_lengths_invalid_slots_neither_break_nor_count():
    mask = torch.tensor([[[False, True, True, True, True]]])
    correct = torch.tensor([[[False, True, True, False, True]]])
    assert accept_lengths(correct, mask).tolist() == [[2]]
    hole = torch.tensor([[[False, True, False, True, True]]])
    wrong_in_hole = torch.tensor([[[False, True, False, True, False]]])
    assert accept_lengths(wrong_in_hole, hole).tolist() == [[2]]  # slot 2 invalid: skipped, slot 3 counts
