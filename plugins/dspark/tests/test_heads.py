"""methods.md §6 item 16: Markov head (vanilla/gated/rnn) and confidence head shapes, parameter counts and the
zero-W2 identity; the inference step equals the teacher-forced block computation."""

from __future__ import annotations

import pytest
import torch

from draftsmith_dspark.confidence_head import ConfidenceHead
from draftsmith_dspark.markov_head import (GatedMarkovHead, RNNMarkovHead, VanillaMarkovHead,
                                           build_markov_head)

V, H, R, GAMMA = 50, 12, 6, 5


def _heads():
    torch.manual_seed(0)
    out = {}
    for kind in ("vanilla", "gated", "rnn"):
        head = build_markov_head(kind, V, H, R)
        torch.nn.init.normal_(head.markov_w2.weight)
        out[kind] = head
    return out


def test_parameter_counts():
    assert sum(p.numel() for p in VanillaMarkovHead(V, H, R).parameters()) == 2 * V * R
    assert sum(p.numel() for p in GatedMarkovHead(V, H, R).parameters()) == 2 * V * R + (H + R) * R + R
    assert sum(p.numel() for p in RNNMarkovHead(V, H, R).parameters()) == 2 * V * R + (2 * R + H) * 3 * R + 3 * R
    assert 2 * 151936 * 256 == 77_791_232  # Qwen3 vocab, rank 256 (methods.md §3.2)
    head = ConfidenceHead(H, R)
    assert head.proj.in_features == H + R and head.proj.out_features == 1 and head.proj.bias is not None
    assert ConfidenceHead(H, 0).proj.in_features == H


@pytest.mark.parametrize("kind", ["vanilla", "gated", "rnn"])
def test_shapes_and_zero_w2_is_identity(kind):
    head = _heads()[kind]
    hidden, prev = torch.randn(2, 3, GAMMA, H), torch.randint(0, V, (2, 3, GAMMA))
    phi = head.features(hidden, prev)
    assert phi.shape == (2, 3, GAMMA, R)
    assert head(hidden, prev).shape == (2, 3, GAMMA, V)
    with torch.no_grad():
        head.markov_w2.weight.zero_()
    base = torch.randn(2, 3, GAMMA, V)
    assert torch.equal(base + head(hidden, prev), base)


def test_fresh_head_is_zero_initialised():
    head = build_markov_head("vanilla", V, H, R)
    assert torch.count_nonzero(head.markov_w2.weight) == 0 and torch.count_nonzero(head.markov_w1.weight) > 0


def test_vanilla_bias_depends_only_on_previous_token():
    head = _heads()["vanilla"]
    prev = torch.tensor([[3, 3, 7]])
    b1 = head(torch.randn(1, 3, H), prev)
    b2 = head(torch.randn(1, 3, H), prev)
    assert torch.equal(b1, b2)  # the hidden state plays no part
    torch.testing.assert_close(b1[0, 0], b1[0, 1])
    assert not torch.allclose(b1[0, 0], b1[0, 2])
    torch.testing.assert_close(b1[0, 2], head.markov_w2.weight @ head.markov_w1.weight[7])


def test_gated_and_rnn_use_hidden_and_history():
    heads = _heads()
    hidden, prev = torch.randn(1, GAMMA, H), torch.randint(0, V, (1, GAMMA))
    other = hidden.clone()
    other[0, 2] += 1.0
    assert not torch.equal(heads["gated"](hidden, prev)[0, 2], heads["gated"](other, prev)[0, 2])
    # the rnn state carries slot 2's input into every later slot; vanilla/gated stay local
    assert not torch.equal(heads["rnn"](hidden, prev)[0, 4], heads["rnn"](other, prev)[0, 4])
    assert torch.equal(heads["gated"](hidden, prev)[0, 4], heads["gated"](other, prev)[0, 4])


@pytest.mark.parametrize("kind", ["vanilla", "gated", "rnn"])
def test_step_by_step_equals_teacher_forced_block(kind):
    head = _heads()[kind]
    hidden, prev = torch.randn(GAMMA, H), torch.randint(0, V, (GAMMA,))
    block = head.features(hidden[None], prev[None])[0]  # (γ, r)
    state, steps = None, []
    for k in range(GAMMA):
        phi, state = head.step(hidden[k:k + 1], prev[k:k + 1], state)
        steps.append(phi)
    torch.testing.assert_close(torch.cat(steps), block)


def test_confidence_head_inputs_and_dtype():
    head = ConfidenceHead(H, R)
    h, e = torch.randn(2, 4, GAMMA, H, dtype=torch.bfloat16), torch.randn(2, 4, GAMMA, R)
    out = head(h, e)
    assert out.shape == (2, 4, GAMMA) and out.dtype == torch.float32
    expected = torch.cat([h.float(), e], -1) @ head.proj.weight[0] + head.proj.bias
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="Markov"):
        head(h)
    with pytest.raises(ValueError, match="without Markov"):
        ConfidenceHead(H, 0)(h, e)


def test_unknown_head_type():
    with pytest.raises(ValueError, match="markov_head_type"):
        build_markov_head("lstm", V, H, R)
