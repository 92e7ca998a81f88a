"""The block-drafting kit of draftsmith.nn: documents, random streams, anchor sampling, the block drafter's
bookkeeping, sharding-aware weights and the shared save helper."""

from __future__ import annotations

import json
import types

import pytest
import torch
from transformers import Qwen3Config

from draftsmith.checkpoint import save_draft
from draftsmith.errors import DraftsmithError
from draftsmith.method import TargetFeatures
from draftsmith.nn.anchors import sample_anchors
from draftsmith.nn.block_backbone import BlockDraftBackbone
from draftsmith.nn.block_drafter import BlockDrafterBase
from draftsmith.nn.documents import document_ids, is_single_document, packed_document_ids
from draftsmith.nn.random_stream import RandomStream
from draftsmith.nn.weights import copy_full_tensor, non_finite_tensors, unwrap_model


def test_documents_split_where_positions_do_not_increase():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 5]])
    docs = document_ids(pos)
    assert docs.tolist() == [[0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 0, 0]]
    # equal to the "restart at 0" reading of packed rows (what packing writes): same equivalence classes
    restart = (pos == 0).long().cumsum(1)
    assert torch.equal(docs[:, :, None] == docs[:, None, :], restart[:, :, None] == restart[:, None, :])
    assert not is_single_document(pos) and is_single_document(pos[1:]) and is_single_document(None)
    assert packed_document_ids(pos[1:]) is None and torch.equal(packed_document_ids(pos), docs)


def test_random_stream_is_reproducible_rank_distinct_and_resumable():
    a, b, other_rank = RandomStream(3, rank=0), RandomStream(3, rank=0), RandomStream(3, rank=1)
    draws = [torch.rand(4, generator=a.next_generator()) for _ in range(3)]
    assert all(torch.equal(x, torch.rand(4, generator=b.next_generator())) for x in draws)
    assert not torch.equal(torch.rand(4, generator=other_rank.next_generator()), draws[0])
    resumed = RandomStream(3, rank=0)
    resumed.load_state_dict(RandomStream(3, rank=0).state_dict() | {"calls": 2})
    assert torch.equal(torch.rand(4, generator=resumed.next_generator()), draws[2])
    x = torch.zeros(2, 3, dtype=torch.float64)
    u = RandomStream(0).uniform_like(x, -0.5, 0.5)
    assert u.dtype == torch.float64 and u.shape == x.shape and bool((u.abs() <= 0.5).all())


def _old_dflash_sampler(valid, num_anchors, generator):
    """The sampler DFlash kept before the kit (regression reference: the kit must draw the same anchors)."""
    b, t = valid.shape
    counts = valid.sum(dim=1)
    n = min(num_anchors, int(counts.max()))
    keys = torch.rand(b, t, generator=generator).masked_fill(~valid, 2.0)
    chosen = keys.argsort(dim=1)[:, :n]
    keep = torch.arange(n)[None] < counts.clamp(max=n)[:, None]
    return chosen.masked_fill(~keep, t).sort(dim=1).values.masked_fill(~keep, 0), keep


def test_sample_anchors_keep_rule_widths_and_old_draws():
    g = torch.Generator().manual_seed(0)
    valid = torch.rand(3, 40, generator=g) < 0.3
    valid[2] = False
    valid[1, :] = False
    valid[1, [4, 9]] = True
    for n in (1, 5, 64):
        got = sample_anchors(valid, n, torch.Generator().manual_seed(7))
        want = _old_dflash_sampler(valid, n, torch.Generator().manual_seed(7))
        assert all(torch.equal(x, y) for x, y in zip(got, want))
    anchors, keep = sample_anchors(valid, 5, torch.Generator().manual_seed(1), fixed_width=True)
    assert anchors.shape == keep.shape == (3, 5)
    assert keep.sum(1).tolist() == [min(5, int(valid[0].sum())), 2, 0]
    assert anchors[1, :2].tolist() == [4, 9] and anchors[~keep].eq(0).all()
    for row in range(3):
        kept = anchors[row][keep[row]]
        assert bool(valid[row, kept].all()) and torch.equal(kept, kept.sort().values) and len(set(kept.tolist())) \
            == len(kept)
    empty, none_kept = sample_anchors(torch.zeros(2, 6, dtype=torch.bool), 4)
    assert empty.shape == (2, 0) and none_kept.shape == (2, 0)
    with pytest.raises(ValueError):
        sample_anchors(valid, 0)


def test_sample_anchors_are_uniform():
    valid = torch.zeros(1, 10, dtype=torch.bool)
    valid[0, 2:8] = True  # six candidates, two picked per draw: each picked with probability 1/3
    stream, hits = RandomStream(0), torch.zeros(10)
    for _ in range(3000):
        anchors, keep = sample_anchors(valid, 2, stream.next_generator())
        hits[anchors[keep]] += 1
    freq = hits[2:8] / 3000
    assert hits[:2].sum() == 0 and hits[8:].sum() == 0
    assert torch.allclose(freq, torch.full_like(freq, 1 / 3), atol=0.04)


class _TinyBlockDraft(BlockDraftBackbone):
    """A block backbone with an embedding: what BlockDrafterBase needs from a draft."""

    def __init__(self, config):
        super().__init__(config, num_context_layers=2)
        self.embedding = torch.nn.Embedding(config.vocab_size, config.hidden_size)

    def embed_tokens(self, ids):
        return self.embedding(ids)


def _tiny_block_draft():
    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    return _TinyBlockDraft(config).eval()


def test_block_drafter_base_passes_equal_a_full_context_forward():
    draft, bs = _tiny_block_draft(), 4
    drafter = BlockDrafterBase(draft, layer_ids=(0, 2), block_size=bs, mask_token_id=49)
    feats = {0: torch.randn(1, 9, 32), 2: torch.randn(1, 9, 32)}
    whole = TargetFeatures({i: t for i, t in feats.items()})
    part = lambda lo, hi: TargetFeatures({i: t[:, lo:hi] for i, t in feats.items()})  # noqa: E731
    drafter.start(torch.arange(5), part(0, 5))
    first = drafter.block_hidden(anchor=7)
    drafter.commit(torch.tensor([7, 8, 9]), part(5, 8))
    second = drafter.block_hidden(anchor=3)
    assert drafter.committed_length == 8 and drafter.cache.length == 8
    # reference: one forward over the whole committed context, no cache
    ids = torch.full((1, bs), 49)
    ids[0, 0] = 3
    ref = draft.backbone_forward(draft.embed_tokens(ids), torch.arange(8, 8 + bs)[None],
                                 whole.stacked((0, 2))[:, :8], None, None, None)[0]
    torch.testing.assert_close(second, ref)
    assert first.shape == (bs, 32)
    with pytest.raises(DraftsmithError, match="one request|tokens but features"):
        drafter.commit(torch.tensor([1, 2]), part(0, 3))


def test_block_drafter_base_refuses_use_before_start():
    drafter = BlockDrafterBase(_tiny_block_draft(), layer_ids=(0,), block_size=3, mask_token_id=1)
    with pytest.raises(DraftsmithError, match="before start"):
        drafter.block_hidden(2)
    with pytest.raises(DraftsmithError, match="non-empty prompt"):
        drafter.start(torch.zeros(0, dtype=torch.long), TargetFeatures({0: torch.zeros(1, 0, 32)}))


def test_weights_helpers():
    dst = torch.zeros(2, 3)
    copy_full_tensor(dst, torch.ones(2, 3, dtype=torch.float64))
    assert dst.dtype == torch.float32 and bool((dst == 1).all())
    with pytest.raises(ValueError, match="shape"):
        copy_full_tensor(dst, torch.ones(3, 2))
    inner = torch.nn.Linear(2, 2)
    wrapper = types.SimpleNamespace(module=types.SimpleNamespace(module=inner))
    assert unwrap_model(torch.nn.Sequential()) is not None
    ddp_like = torch.nn.Module()
    ddp_like.module = inner
    assert unwrap_model(ddp_like) is inner and unwrap_model(wrapper) is wrapper  # only nn.Module wrappers unwrap
    state = {"a": torch.tensor([1.0, float("nan")]), "b": torch.tensor([1, 2]), "c": torch.tensor([float("inf")])}
    assert non_finite_tensors(state) == ["a", "c"]


def test_save_draft_refuses_non_finite_casts_a_copy_and_unwraps(tmp_path):
    from draftsmith_dflash.draft_qwen3 import Qwen3DFlashDraftModel  # any saved-by-HF draft will do

    target = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, architectures=["Qwen3ForCausalLM"])
    draft = Qwen3DFlashDraftModel(Qwen3DFlashDraftModel.build_draft_config(target, mask_token_id=63,
                                                                           num_draft_layers=1))
    wrapper = torch.nn.Module()
    wrapper.module = draft
    out = save_draft(wrapper, tmp_path / "bf16", dtype="bfloat16", architectures=["Engine"])
    written = json.loads((out / "config.json").read_text())
    assert written["dtype"] == "bfloat16" and written["architectures"] == ["Engine"]
    assert draft.fc.weight.dtype == torch.float32  # the live draft is untouched
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.get_tensor("fc.weight").dtype == torch.bfloat16
    with torch.no_grad():
        draft.fc.weight[0, 0] = float("nan")
    with pytest.raises(DraftsmithError, match="non-finite weights: \\['fc.weight'\\]"):
        save_draft(draft, tmp_path / "nan")
    with pytest.raises(DraftsmithError, match="floating torch dtype"):
        save_draft(draft, tmp_path / "x", dtype="int8", check_finite=False)
