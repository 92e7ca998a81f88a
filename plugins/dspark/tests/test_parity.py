"""Parity of the DSpark draft with independent references (tiny configs, fp32, copied weights).

* The draft's backbone over a sample-from-anchor block ``[x_a, MASK × (γ−1)]`` at positions ``a … a+γ−1``, with
  no target context and every slot seeing every slot, is transformers' ``Qwen3Model`` built from the *draft's own
  config* (``model_type`` qwen3, rope taken from the target — default and YaRN) with bidirectional attention, the
  weights loaded by name: the draft's tensors are a Qwen3 backbone's (what serving forks load).
* The slot logits ``lm_head(h_k) + W2·φ_k`` and confidence logits ``proj([h_k; W1[x_{k−1}]])`` of the training
  forward equal the formulas of methods.md §3.2–3.3 written out directly, for every Markov head type, with the
  teacher-forced previous tokens ``[x_a, x_{a+1}, …]``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import Qwen3Model

GAMMA = 5


def _randomise_vectors(module: torch.nn.Module, seed: int) -> None:
    """Norm weights and biases away from their init (make_draft randomises matrices only)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.dim() == 1:
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))


def _blocks(tiny, anchors: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, γ) block ids ``[x_a, MASK, ...]`` and their positions ``a + k`` for one anchor per row."""
    ids = tiny.make_batch(batch=len(anchors), length=32)["input_ids"]
    a = torch.tensor(anchors)[:, None]
    block = torch.full((len(anchors), GAMMA), tiny.MASK_ID)
    block[:, 0] = ids.gather(1, a)[:, 0]
    return block, a + torch.arange(GAMMA)


@pytest.mark.parametrize("rope", [
    {"rope_type": "default", "rope_theta": 1e4},
    {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0, "original_max_position_embeddings": 64},
], ids=["default", "yarn"])
def test_backbone_without_context_is_a_bidirectional_qwen3_model(tiny, rope):
    tc = tiny.target_config(rope_parameters=rope)
    draft = tiny.make_draft(tc, block_size=GAMMA, num_draft_layers=2)
    _randomise_vectors(draft, seed=4)
    reference = Qwen3Model(draft.config).float().eval()
    own = draft.state_dict()
    names = set(reference.state_dict())
    assert names <= set(own)  # every Qwen3 backbone tensor exists in the draft under the same name
    reference.load_state_dict({k: own[k] for k in names}, strict=True)

    block, positions = _blocks(tiny, [3, 17, 26])
    with torch.no_grad():
        ours = draft.backbone_forward(draft.embed_tokens(block), positions)  # (B, γ, H): no context, no mask
        everyone = torch.ones(block.shape[0], 1, GAMMA, GAMMA, dtype=torch.bool)  # bidirectional in the block
        ref = reference(input_ids=block, position_ids=positions, attention_mask=everyone).last_hidden_state
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(draft.rotary_emb.inv_freq, reference.rotary_emb.inv_freq)


def _markov_features(head, kind: str, hidden: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """φ of methods.md §3.2 for hidden (N, γ, H), prev (N, γ), written out slot by slot."""
    e = head.markov_w1.weight[prev]  # (N, γ, r)
    if kind == "vanilla":
        return e
    if kind == "gated":
        gate = torch.sigmoid(F.linear(torch.cat([hidden, e], -1), head.gate_proj.weight, head.gate_proj.bias))
        return gate * e
    state, out = torch.zeros_like(e[:, 0]), []
    for k in range(prev.shape[1]):  # s_k = σ(g)·s_{k−1} + (1 − σ(g))·tanh(c), φ_k = tanh(o)
        g, c, o = F.linear(torch.cat([state, e[:, k], hidden[:, k]], -1), head.joint_proj.weight,
                           head.joint_proj.bias).chunk(3, -1)
        state = torch.sigmoid(g) * state + (1 - torch.sigmoid(g)) * torch.tanh(c)
        out.append(torch.tanh(o))
    return torch.stack(out, 1)


@pytest.mark.parametrize("kind", ["vanilla", "gated", "rnn"])
def test_slot_logits_and_confidence_equal_the_direct_formulas(tiny, kind):
    tc = tiny.target_config()
    target = tiny.make_target(tc)
    draft = tiny.make_draft(tc, block_size=GAMMA, markov_head_type=kind, scale=0.3)
    draft.copy_embeddings_from_target(target.get_input_embeddings(), target.get_output_embeddings())
    with torch.no_grad():
        draft.markov_head.markov_w2.weight.normal_(std=0.3)  # a Markov bias that matters
    batch = tiny.make_batch(batch=2, length=24)
    ids, loss_mask = batch["input_ids"], batch["loss_mask"]
    context = torch.randn(2, 24, 2 * 64, generator=torch.Generator().manual_seed(5))
    anchors = torch.tensor([[5, 9, 16], [6, 11, 12]])
    with torch.no_grad():
        hid = draft.forward_hidden(ids, context, loss_mask, anchors=anchors)
        out = draft(ids, context, loss_mask, anchors=anchors)
    h = hid.hidden.reshape(-1, GAMMA, 64)  # (N, γ, H)
    prev = torch.stack([ids[b, a + torch.arange(GAMMA)] for b in range(2) for a in anchors[b].tolist()])  # x_{a+k}
    assert torch.equal(hid.prev_ids.reshape(-1, GAMMA), prev)
    head = draft.markov_head
    phi = _markov_features(head, kind, h, prev)  # (N, γ, r)
    logits = F.linear(h, target.get_output_embeddings().weight) + F.linear(phi, head.markov_w2.weight)
    torch.testing.assert_close(out.draft_logits.reshape(-1, GAMMA, 128), logits, rtol=1e-5, atol=1e-5)
    proj = draft.confidence_head.proj
    conf = F.linear(torch.cat([h, head.markov_w1.weight[prev]], -1), proj.weight, proj.bias)[..., 0]
    torch.testing.assert_close(out.confidence_pred.reshape(-1, GAMMA), conf, rtol=1e-5, atol=1e-5)
