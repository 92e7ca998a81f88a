"""The "toychain" method: a small but real torch draft method, registered in-process, for the decode /
estimate / eval tests.

The toy draft drafts a chain: ``logits_s = bigram[x_{s-1}] + scale · proj(h)`` where ``h`` is the target's
feature (output of one decoder layer) at the last committed position. Filled from the target's own greedy
output, its bigram table makes decent drafts (τ well above 1), and the feature term makes every draft depend on
the captured target features. It saves/loads like any draft (config.json + model.safetensors with a
``draftsmith`` block), so ``draftsmith eval`` can load it through the registry.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

import draftsmith
from draftsmith.checkpoint import draft_metadata
from draftsmith.method import MethodSpec, ObjectiveOutput, Proposal, TargetFeatures, TargetRequest
from draftsmith.spec import object_path

METHOD = "toychain"
ARCHS = ("Qwen3ForCausalLM", "LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")


class ToyDraftConfig(PretrainedConfig):
    model_type = "draftsmith_toychain"

    def __init__(self, vocab_size: int = 128, hidden_size: int = 64, feature_layer: int = 1,
                 feature_scale: float = 0.05, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.feature_layer, self.feature_scale = feature_layer, feature_scale


class ToyDraft(PreTrainedModel):
    config_class = ToyDraftConfig
    base_model_prefix = "toy"

    def __init__(self, config: ToyDraftConfig) -> None:
        super().__init__(config)
        self.bigram = nn.Parameter(torch.zeros(config.vocab_size, config.vocab_size))
        self.proj = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def build_draft_config(cls, target_config: Any, **options: Any) -> ToyDraftConfig:
        layer = int(options.get("feature_layer", target_config.num_hidden_layers // 2))
        config = ToyDraftConfig(vocab_size=target_config.vocab_size, hidden_size=target_config.hidden_size,
                                feature_layer=layer, feature_scale=float(options.get("feature_scale", 0.05)))
        config.draftsmith = draft_metadata(METHOD, object_path(cls), target_config, target_layer_ids=[layer])
        return config

    def fill_bigram(self, sequence: list[int], sharpness: float = 4.0) -> None:
        counts = torch.zeros_like(self.bigram)
        for a, b in zip(sequence[:-1], sequence[1:]):
            counts[a, b] += 1
        with torch.no_grad():
            self.bigram.copy_(sharpness * torch.log1p(counts))

    def logits(self, tokens: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        """tokens (...,), feature (..., H) → (..., V)"""
        return self.bigram[tokens] + self.config.feature_scale * self.proj(feature)


class ToyDrafter:
    def __init__(self, draft: ToyDraft, heads: Any = None, **options: Any) -> None:
        self.draft = draft
        self.layer = draft.config.feature_layer
        self.feature: torch.Tensor | None = None

    def target_request(self) -> TargetRequest:
        return TargetRequest(layer_ids=(self.layer,))

    def start(self, prompt_ids: torch.Tensor, features: TargetFeatures) -> None:
        self.feature = features.hidden_states[self.layer][0, -1]  # (H,) last prompt position

    @torch.no_grad()
    def propose(self, anchor: int, num_tokens: int, temperature: float = 0.0,
                generator: torch.Generator | None = None) -> Proposal:
        token = torch.tensor(anchor, device=self.feature.device)
        tokens, probs = [], []
        for _ in range(num_tokens):
            logits = self.draft.logits(token, self.feature)  # (V,)
            if temperature == 0:
                token = logits.argmax()
            else:
                q = torch.softmax(logits / temperature, dim=-1)
                token = torch.multinomial(q, 1, generator=generator)[0]
                probs.append(q)
            tokens.append(token)
        return Proposal(tokens=torch.stack(tokens), probs=torch.stack(probs) if probs else None)

    def commit(self, tokens: torch.Tensor, features: TargetFeatures) -> None:
        self.feature = features.hidden_states[self.layer][0, -1]


class ToyObjective:
    def __init__(self, draft: ToyDraft, heads: Any, num_draft_tokens: int = 5, **options: Any) -> None:
        self.draft, self.gamma = draft, num_draft_tokens
        self.layer = draft.config.feature_layer

    def target_request(self) -> TargetRequest:
        return TargetRequest(layer_ids=(self.layer,))

    def __call__(self, batch: Mapping[str, torch.Tensor], features: TargetFeatures) -> ObjectiveOutput:
        x, h = batch["input_ids"], features.hidden_states[self.layer]
        logits = self.draft.logits(x[:, 1:-1], h[:, :-2])  # anchor a uses the feature of a - 1
        mask = batch["loss_mask"][:, 2:].bool()
        loss = nn.functional.cross_entropy(logits[mask], x[:, 2:][mask])
        return ObjectiveOutput(loss=loss, metrics={}, num_tokens=int(mask.sum()))

    @torch.no_grad()
    def acceptance_lengths(self, batch: Mapping[str, torch.Tensor], features: TargetFeatures) -> torch.Tensor:
        """Greedy chain from every anchor at once: draft s matches x[a + 1 + s] (teacher forcing is exact on
        an accepted prefix, where drafts equal data tokens)."""
        x, h = batch["input_ids"], features.hidden_states[self.layer]
        b, t = x.shape
        out = torch.full((b, t), -1, dtype=torch.long)
        alive = torch.ones(b, t - 1, dtype=torch.bool)  # anchors a = 1 .. t-1 (index a - 1)
        count = torch.zeros(b, t - 1, dtype=torch.long)
        feat = h[:, :-1]  # feature of a - 1 for anchor a
        for s in range(self.gamma):
            idx = torch.arange(1, t) + s  # position of the token drafted from, per anchor
            ok = idx + 1 < t
            tok = x[:, idx.clamp(max=t - 1)]
            label = x[:, (idx + 1).clamp(max=t - 1)]
            hit = (self.draft.logits(tok, feat).argmax(-1) == label) & ok & alive
            count += hit.long()
            alive = hit
        out[:, 1:] = count
        return out


def register_toy_method() -> None:
    draftsmith.register_draft(draftsmith.DraftSpec(method=METHOD, architectures=ARCHS, draft_cls=ToyDraft))
    draftsmith.register_method(MethodSpec(name=METHOD, summary="bigram + feature toy chain draft (tests)",
                                          objective=ToyObjective, drafter=ToyDrafter))


def toy_draft_for(model: Any, reference: list[int], feature_scale: float = 0.05) -> ToyDraft:
    register_toy_method()
    spec = draftsmith.resolve_draft_spec(METHOD, model.config.architectures)
    draft = spec.build(model.config, feature_scale=feature_scale).eval()
    draft.fill_bigram(reference)
    return draft
