"""The toychain toy method itself (support.decode): it saves and loads through the registry, and its batched
acceptance lengths equal greedy drafting from every anchor."""

from __future__ import annotations

import torch

import draftsmith

from support.decode import ToyDrafter, ToyObjective, toy_draft_for


def test_toy_draft_saves_and_loads_through_the_registry(tmp_path):
    from draftsmith.decode.testing import tiny_target

    model = tiny_target("qwen3")
    draft = toy_draft_for(model, list(range(50)))
    draft.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = draftsmith.load_draft(tmp_path)
    assert type(loaded).__name__ == "ToyDraft"
    torch.testing.assert_close(loaded.bigram, draft.bigram)


def test_toy_drafter_matches_its_batched_objective():
    """The batched acceptance lengths equal greedy drafting from each anchor (the §6 item 5 analogue)."""
    from draftsmith.decode import generate_plain
    from draftsmith.decode.testing import tiny_target
    from draftsmith.target import run_target

    model = tiny_target("qwen3")
    prompt = torch.tensor([5, 17, 33, 9, 100, 7])
    seq = torch.cat([prompt, torch.tensor(generate_plain(model, prompt, 30, eos_token_ids=()).tokens)])
    draft = toy_draft_for(model, seq.tolist())
    obj, drafter = ToyObjective(draft, None, num_draft_tokens=4), ToyDrafter(draft)
    feats, _ = run_target(model, obj.target_request(), seq[None])
    lengths = obj.acceptance_lengths({"input_ids": seq[None]}, feats)[0]
    assert (lengths[1:] >= 1).float().mean() > 0.3  # the bigram draft is a useful draft
    for a in range(1, len(seq)):
        drafter.feature = feats.hidden_states[drafter.layer][0, a - 1]
        k = min(4, len(seq) - 1 - a)
        drafts = drafter.propose(int(seq[a]), k).tokens.tolist() if k else []
        n = 0
        while n < k and drafts[n] == int(seq[a + 1 + n]):
            n += 1
        assert lengths[a] == n, a
