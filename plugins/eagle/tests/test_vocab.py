"""Draft-vocabulary selection and the d2t / t2d mapping."""

from __future__ import annotations

import pytest
import torch

from draftsmith.errors import ConfigError
from draftsmith_eagle.vocab import select_draft_vocab


def test_specials_first_then_frequency_with_stable_ties():
    counts = torch.tensor([0, 5, 9, 9, 0, 7, 9, 1, 0, 0])
    ids = select_draft_vocab(counts, 6, special_token_ids=[4, 2, None, 99, 4])
    # specials 4, 2 (in the given order; None / out-of-range / duplicates ignored), then 9-count ties by id (3, 6),
    # then 7 (id 5), 5 (id 1)
    assert ids.tolist() == [4, 2, 3, 6, 5, 1]
    assert select_draft_vocab(counts, 3).tolist() == [2, 3, 6]
    # fewer seen tokens than slots: the never-seen ids fill the rest in ascending order
    assert select_draft_vocab(counts, 8).tolist() == [2, 3, 6, 5, 1, 7, 0, 4]
    assert select_draft_vocab(counts, 10).tolist() == list(range(10))  # no compression: identity
    assert select_draft_vocab(counts.float(), 3).tolist() == [2, 3, 6]
    with pytest.raises(ConfigError, match="non-negative"):
        select_draft_vocab(torch.tensor([1, -1, 2]), 2)
    with pytest.raises(ConfigError, match=">= 1"):
        select_draft_vocab(counts, 0)


def test_vocab_mapping(eagle):
    tc = eagle.target_config()
    draft = eagle.make_eagle3(tc, draft_vocab_size=4)
    assert draft.selected_token_ids().tolist() == [0, 1, 2, 3]  # identity placeholder
    draft.set_vocab_mapping(torch.tensor([7, 2, 100, 5]))
    assert draft.d2t.tolist() == [7, 1, 98, 2] and draft.d2t.dtype == torch.int64  # target = draft + d2t
    assert draft.t2d.dtype == torch.bool and draft.t2d.nonzero().flatten().tolist() == [2, 5, 7, 100]
    assert draft.draft_to_target(torch.tensor([2, 0])).tolist() == [100, 7]
    draft.to(torch.bfloat16)  # buffers survive dtype casts
    assert draft.d2t.dtype == torch.int64 and draft.t2d.dtype == torch.bool
    assert draft.selected_token_ids().tolist() == [7, 2, 100, 5]
    for bad, match in [([1, 2, 3], "got 3 ids"), ([1, 1, 2, 3], "distinct"), ([1, 2, 3, 128], r"\[0, 128\)")]:
        with pytest.raises(ConfigError, match=match):
            draft.set_vocab_mapping(torch.tensor(bad))
    with torch.no_grad():
        draft.t2d[0] = True
    with pytest.raises(ConfigError, match="inconsistent"):
        draft.check_vocab_mapping()
    full = eagle.make_eagle3(tc, draft_vocab_size=128)
    assert not hasattr(full, "d2t")  # no compression: no buffers
    full.set_vocab_mapping(torch.arange(128))
    with pytest.raises(ConfigError, match="identity"):
        full.set_vocab_mapping(torch.arange(128).flip(0))
