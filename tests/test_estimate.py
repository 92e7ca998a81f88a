"""Offline acceptance estimators (methods.md §5, §6 items 1–2) and the exactness of greedy trajectory replay:
on sequences that are the target's own greedy output, replay τ == the τ of real speculative decoding."""

from __future__ import annotations

import pytest
import torch

from draftsmith.decode import DecodeStats, SpeculativeDecoder, generate_plain
from draftsmith.decode.estimate import (ReplayStats, acceptance_probability, analytic_tau, expected_tau,
                                        expected_tau_iid, replay_greedy, replay_tau, tau_from_hits,
                                        teacher_forced_tau)
from draftsmith.decode.testing import OracleDrafter, every_nth, oracle_acceptance_lengths, tiny_target
from draftsmith.target import run_target

from support.decode import ToyDrafter, ToyObjective, toy_draft_for


def test_expected_tau_reference_numbers():
    assert expected_tau([0.9, 0.8, 0.7]) == pytest.approx(3.124)
    assert expected_tau_iid(0.8, 7) == pytest.approx(4.1611392)
    assert expected_tau_iid(0.8, 15) == pytest.approx(4.8592625)
    assert expected_tau_iid(0.5, 7) == pytest.approx(1.9921875)
    assert expected_tau([0.8] * 7) == pytest.approx(expected_tau_iid(0.8, 7))
    assert expected_tau_iid(1.0, 7) == 8.0 and expected_tau_iid(0.0, 7) == 1.0
    batched = expected_tau(torch.tensor([[0.9, 0.8, 0.7], [1.0, 1.0, 1.0]]))
    assert torch.allclose(batched, torch.tensor([3.124, 4.0], dtype=torch.float64))


def test_acceptance_probability_reference_numbers():
    p, q = torch.tensor([0.7, 0.3]), torch.tensor([0.5, 0.5])
    assert acceptance_probability(p, q).item() == pytest.approx(0.8)
    assert acceptance_probability(p, q).item() == pytest.approx(1 - 0.5 * (p - q).abs().sum().item())
    assert acceptance_probability(p, p).item() == pytest.approx(1.0)
    assert acceptance_probability(torch.tensor([1.0, 0]), torch.tensor([0, 1.0])).item() == 0.0


def test_analytic_tau_teacher_forced_and_hits():
    p = torch.softmax(torch.randn(6, 4, 10), dim=-1)
    assert analytic_tau(p, p).item() == pytest.approx(5.0)  # identical distributions: every slot accepted
    disjoint_d = torch.zeros(1, 3, 2)
    disjoint_d[..., 0] = 1
    assert analytic_tau(disjoint_d, disjoint_d.flip(-1)).item() == pytest.approx(1.0)
    # a missing slot stops the product: valid masks slot 2 → τ = 1 + 1 + 1
    assert analytic_tau(p[:1, :3], p[:1, :3], torch.tensor([[True, True, False]])).item() == pytest.approx(3.0)
    assert teacher_forced_tau(torch.tensor([[-1, 2, 0, 4, -1]])) == pytest.approx(1 + 2.0)
    assert tau_from_hits([8, 6, 3], [10, 10, 10]) == pytest.approx(1 + 0.8 + 0.6 + 0.3)


def test_replay_visits_anchors_like_decoding():
    # prompt 0..2, generated span 3..11 (9 tokens): anchors 3 → L=2 (τ 3) → 6: L=0 (τ 1) → 7: L=5 capped
    # by γ=3 (τ 4) → 11 = end - 1: stop. 1 + 3 + 1 + 4 = 9 tokens.
    lengths = torch.tensor([[-1, -1, -1, 2, 9, 9, 0, 5, 9, 9, 9, 0]])
    loss_mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1]])
    stats = replay_greedy(lengths, loss_mask, num_draft_tokens=3)
    assert stats.taus == [3, 1, 4] and stats.tau == pytest.approx(8 / 3)
    assert stats.offered_at == [3, 2, 2] and stats.accepted_at == [2, 2, 1]
    # the last round is cut by the end of the span: anchor 9 of a 12-token span has 2 tokens left
    cut = replay_greedy(torch.tensor([[-1, 9, 9, 9, 9, 9]]), torch.tensor([[0, 1, 1, 1, 1, 1]]),
                        num_draft_tokens=3)
    assert cut.taus == [4]
    # an unusable anchor stops that generation's replay
    stopped = replay_greedy(torch.tensor([[-1, 0, -1, 0, 0]]), torch.tensor([[0, 1, 1, 1, 1]]))
    assert stopped.taus == [1] and stopped.truncated == 1
    # two assistant turns in one row are two generations
    two = replay_greedy(torch.tensor([[-1, 1, 0, -1, -1, 3, 0, 0]]), torch.tensor([[0, 1, 1, 0, 0, 1, 1, 1]]))
    assert two.sequences == 2 and two.taus == [1, 2]


def test_replay_stats_merge_and_all_reduce_without_process_group():
    a = replay_greedy(torch.tensor([[-1, 1, 0, 0]]), torch.tensor([[0, 1, 1, 1]]))
    b = replay_greedy(torch.tensor([[-1, 0, 2, 0, 0]]), torch.tensor([[0, 1, 1, 1, 1]]))
    merged = ReplayStats().merge(a).merge(b)
    assert merged.rounds == a.rounds + b.rounds and merged.committed == a.committed + b.committed
    assert merged.all_reduce() is merged  # no process group: unchanged
    assert merged.to_dict()["tau_replay"] == pytest.approx(merged.tau)


PROMPTS = [torch.tensor([5, 17, 33, 9, 100, 7]), torch.tensor([3, 44, 90, 12]), torch.tensor([77, 2 + 60, 8])]


@pytest.mark.parametrize("gamma,rule", [(3, every_nth(3)), (5, every_nth(4, offset=1)), (7, every_nth(7, 2))])
def test_replay_equals_real_greedy_tau_with_an_oracle(gamma, rule):
    model = tiny_target("qwen3")
    prompt = PROMPTS[0]
    gen = generate_plain(model, prompt, 40, eos_token_ids=()).tokens
    seq = prompt.tolist() + gen
    drafter = OracleDrafter(reference=seq, vocab_size=128, corrupt=rule)
    real = SpeculativeDecoder(model, drafter, num_draft_tokens=gamma, eos_token_ids=()).generate(prompt, 40)
    assert real.tokens == gen
    lengths = oracle_acceptance_lengths(torch.tensor(seq), drafter, len(prompt), gamma)
    loss_mask = torch.tensor([0] * len(prompt) + [1] * len(gen))
    replay = replay_greedy(lengths[None], loss_mask[None], num_draft_tokens=gamma)
    assert replay.taus == real.taus
    stats = DecodeStats.of([real])
    assert replay.conditional_acceptance == pytest.approx(stats.conditional_acceptance)


def test_replay_equals_real_greedy_tau_with_a_torch_draft():
    """In-test torch method: batched acceptance lengths (one target forward, one draft pass) replayed over a
    right-padded batch of target-greedy sequences == speculative decoding with the same draft."""
    model = tiny_target("qwen3")
    gamma, new = 4, 32
    seqs, real_taus = [], []
    gens = [generate_plain(model, p, new, eos_token_ids=()).tokens for p in PROMPTS]
    draft = toy_draft_for(model, [t for p, g in zip(PROMPTS, gens) for t in p.tolist() + g])
    for prompt, gen in zip(PROMPTS, gens):
        out = SpeculativeDecoder(model, ToyDrafter(draft), num_draft_tokens=gamma,
                                 eos_token_ids=()).generate(prompt, new)
        assert out.tokens == gen
        real_taus += out.taus
        seqs.append(prompt.tolist() + gen)
    width = max(map(len, seqs))
    input_ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
    attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    loss_mask = torch.tensor([[0] * len(p) + [1] * new + [0] * (width - len(p) - new) for p in PROMPTS])
    objective = ToyObjective(draft, None, num_draft_tokens=gamma)
    batch = {"input_ids": input_ids, "attention_mask": attention, "loss_mask": loss_mask}
    features, _ = run_target(model, objective.target_request(), input_ids, attention_mask=attention)
    replay = replay_tau(objective, batch, features, num_draft_tokens=gamma)
    assert replay.taus == real_taus
    assert replay.tau > 1.5  # a meaningful draft, not the trivial τ = 1
    # teacher-forced averaging over all anchors is a different (biased) number, reported for comparison
    assert teacher_forced_tau(objective.acceptance_lengths(batch, features)) != pytest.approx(replay.tau)


def test_replay_tau_is_none_without_acceptance_lengths():
    class NoLengths:
        pass

    assert replay_tau(NoLengths(), {"loss_mask": torch.ones(1, 3)}, None) is None
