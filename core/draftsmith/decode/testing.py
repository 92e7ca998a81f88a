"""Reference drafters and tiny targets for testing the engine — and a plugin's drafter against the engine.

* :class:`RandomDrafter` — random chains; at temperature > 0 each draft is drawn from a random ``q`` it
  returns, which exercises the rejection sampler; greedy decoding must still equal the target's.
* :class:`OracleDrafter` — proposes a known continuation (e.g. the target's own greedy output), corrupting the
  slots a deterministic rule picks, so the exact τ of every round is known in advance.
* :class:`OracleTreeDrafter` — the same continuation hidden in a tree among wrong siblings.

All follow the :class:`draftsmith.method.Drafter` protocol and track the committed length the way a real
drafter tracks its KV cache: ``start`` sets it to the prompt length, ``commit`` adds the committed tokens.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from ..method import Proposal, TargetFeatures, TargetRequest

Corruption = Callable[[int, int], bool]  # (anchor position, draft slot 0..k-1) -> replace the token?


def every_nth(n: int, offset: int = 0) -> Corruption:
    """A corruption rule: draft slot ``s`` from anchor ``a`` is wrong when ``(a + 2·s + offset) % n == 0``."""
    return lambda a, s: (a + 2 * s + offset) % n == 0


_FAMILIES = {"qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
             "mistral": "MistralForCausalLM"}


def tiny_target(arch: str = "qwen3", *, vocab_size: int = 128, num_layers: int = 4, seed: int = 0,
                attn_implementation: str = "sdpa", **overrides: Any) -> torch.nn.Module:
    """A random fp32 target of a given family (qwen3, llama, qwen2, mistral), frozen, on CPU
    (:mod:`draftsmith.testing` sizes, special ids 1/2/0, untied head)."""
    from draftsmith.testing import make_tiny_target, tiny_target_config

    config = tiny_target_config(_FAMILIES[arch], num_layers, **{
        "vocab_size": vocab_size, "head_dim": 16, "max_position_embeddings": 512, "bos_token_id": 1,
        "eos_token_id": 2, "pad_token_id": 0, "tie_word_embeddings": False, **overrides})
    # random init is near-uniform; a larger lm_head makes greedy argmax margins far above fp32 noise
    return make_tiny_target(config, seed, attn_implementation=attn_implementation, head_scale=8.0)


class _Tracking:
    """Committed-length bookkeeping shared by the reference drafters."""

    request = TargetRequest()

    def target_request(self) -> TargetRequest:
        return self.request

    def start(self, prompt_ids: torch.Tensor, features: TargetFeatures) -> None:
        self.length = int(prompt_ids.numel())
        self.calls: list[tuple[int, int]] = []  # (anchor position, num_tokens) per propose

    def commit(self, tokens: torch.Tensor, features: TargetFeatures) -> None:
        for name, h in [*features.hidden_states.items(), ("final", features.final_hidden)]:
            if h is not None and h.shape[1] != tokens.numel():
                raise AssertionError(f"features {name} cover {h.shape[1]} positions, {tokens.numel()} tokens")
        self.length += int(tokens.numel())


class RandomDrafter(_Tracking):
    """Random drafts; ``q`` is a random (peaked) distribution per slot, returned at temperature > 0."""

    def __init__(self, draft: Any = None, heads: Any = None, *, vocab_size: int | None = None,
                 request: TargetRequest | None = None, sharpness: float = 3.0) -> None:
        self.vocab_size = vocab_size or heads.vocab_size
        self.request = request or TargetRequest()
        self.sharpness = sharpness

    def propose(self, anchor: int, num_tokens: int, temperature: float = 0.0,
                generator: torch.Generator | None = None) -> Proposal:
        device = generator.device if generator is not None else "cpu"
        logits = torch.randn(num_tokens, self.vocab_size, generator=generator, device=device) * self.sharpness
        q = logits.softmax(dim=-1)  # (k, V)
        if temperature == 0:
            return Proposal(tokens=q.argmax(dim=-1))
        return Proposal(tokens=torch.multinomial(q, 1, generator=generator)[:, 0], probs=q)


class OracleDrafter(_Tracking):
    """Proposes ``reference[a + 1 : a + 1 + k]`` from anchor position ``a``, with corrupted slots."""

    def __init__(self, draft: Any = None, heads: Any = None, *, reference: Sequence[int], vocab_size: int,
                 corrupt: Corruption | None = None, request: TargetRequest | None = None) -> None:
        self.reference = [int(t) for t in reference]
        self.vocab_size = vocab_size
        self.corrupt = corrupt or (lambda a, s: False)
        self.request = request or TargetRequest()

    def continuation(self, anchor_pos: int, num_tokens: int) -> list[int]:
        out = []
        for s in range(num_tokens):
            j = anchor_pos + 1 + s
            t = self.reference[j] if j < len(self.reference) else 0
            out.append((t + 1) % self.vocab_size if self.corrupt(anchor_pos, s) else t)
        return out

    def propose(self, anchor: int, num_tokens: int, temperature: float = 0.0,
                generator: torch.Generator | None = None) -> Proposal:
        self.calls.append((self.length, num_tokens))
        device = generator.device if generator is not None else "cpu"
        return Proposal(tokens=torch.tensor(self.continuation(self.length, num_tokens), device=device))


class OracleTreeDrafter(OracleDrafter):
    """A tree whose every level holds a wrong sibling first and the oracle's token second, continuing from the
    oracle's node, plus a wrong-only branch — so the walk must pick the right child among several."""

    def propose(self, anchor: int, num_tokens: int, temperature: float = 0.0,
                generator: torch.Generator | None = None) -> Proposal:
        self.calls.append((self.length, num_tokens))
        depth = max(1, num_tokens // 2)
        chain = self.continuation(self.length, depth)
        tokens, parents, prev = [], [], -1
        for s, t in enumerate(chain):
            tokens += [(t + 3) % self.vocab_size, t]  # wrong sibling first, then the oracle's token
            parents += [prev, prev]
            if s == 0:  # a wrong-only sub-branch under the wrong first-level sibling
                tokens.append((t + 5) % self.vocab_size)
                parents.append(len(tokens) - 3)
            prev = len(tokens) - 1 if s else len(tokens) - 2
        device = generator.device if generator is not None else "cpu"
        return Proposal(tokens=torch.tensor(tokens, device=device), parents=torch.tensor(parents, device=device))


def oracle_acceptance_lengths(tokens: torch.Tensor, reference_drafter: OracleDrafter, start: int,
                              num_draft_tokens: int) -> torch.Tensor:
    """(T,) long: how many of an :class:`OracleDrafter`'s drafts from each anchor ``a >= start`` match
    ``tokens`` (the ``Objective.acceptance_lengths`` contract; -1 before ``start``)."""
    seq = tokens.tolist()
    out = torch.full((len(seq),), -1, dtype=torch.long)
    for a in range(start, len(seq)):
        drafts = reference_drafter.continuation(a, min(num_draft_tokens, len(seq) - 1 - a))
        n = 0
        while n < len(drafts) and drafts[n] == seq[a + 1 + n]:
            n += 1
        out[a] = n
    return out


CHATML_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                   "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def save_tiny_target(path: Any, arch: str = "qwen3", *, chat_template: bool = True, seed: int = 0,
                     **overrides: Any) -> torch.nn.Module:
    """Write a tiny target (safetensors) with a word-level tokenizer (and a ChatML template) to ``path``.

    Ids: 0 ``<|pad|>``, 1 ``<|bos|>``, 2 ``<|im_end|>`` (EOS), 3 ``<|im_start|>``, 4 ``<unk>``, then words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ("the a of to and in is it you that he was for on are with as I his they be at one have this from "
             "or had by hot word but what some we can out other were all there when up use your how said an "
             "each she which do their time if will way about many then them write would like so these her long "
             "make thing see him two has look more day could go come did number sound no most people my over "
             "know water than call first who may down side been now find any new work part take get place made "
             "live where after back little only round man year came show every good me give our under name "
             "very through just form sentence great think say help low line differ turn cause much mean before "
             "move right boy old too same tell user assistant").split()
    specials = ["<|pad|>", "<|bos|>", "<|im_end|>", "<|im_start|>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + list(dict.fromkeys(words)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", bos_token="<|bos|>",
                                   eos_token="<|im_end|>", unk_token="<unk>",
                                   additional_special_tokens=["<|im_start|>"])
    if chat_template:
        fast.chat_template = CHATML_TEMPLATE
    size = max(len(vocab), overrides.pop("vocab_size", 0))
    model = tiny_target(arch, vocab_size=size, seed=seed, **overrides)
    model.generation_config.eos_token_id = 2
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return model
