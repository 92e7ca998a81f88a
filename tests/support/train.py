"""The "toy" training method and what the train / offline / distributed tests run it with.

* the toy method, registered in-process (``register_toy``): a real torch draft predicting token ``a+1`` from the
  target features at ``a-1`` and the embedding of token ``a`` through the target lm_head, so its loss really
  falls. Its objective uses global denominators under torch.distributed (DDP-correct), can sleep per step (to
  kill a run mid-way) and can return NaN after N training calls;
* ``launcher(tmp)``: a script that registers the toy method and runs the draftsmith CLI (for subprocesses and
  torchrun);
* ``toy_config`` (a small training config), ``run_train`` / ``prepare`` (in process), ``read_metrics``,
  ``train_losses``, ``load_weights``, ``finite``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from draftsmith.checkpoint import draft_metadata
from draftsmith.method import ObjectiveOutput, TargetRequest
from draftsmith.spec import object_path

from support import REPO, TESTS


def toy_layer_policy(num_target_layers, **_options):
    return [max(0, num_target_layers // 2 - 1), num_target_layers - 2]


class ToyDraftConfig(PretrainedConfig):
    model_type = "draftsmith_toy"

    def __init__(self, vocab_size=128, hidden_size=64, target_hidden_size=32, target_layer_ids=(1, 2), **kwargs):
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.target_hidden_size, self.target_layer_ids = target_hidden_size, list(target_layer_ids)
        super().__init__(**kwargs)


class ToyDraft(PreTrainedModel):
    config_class = ToyDraftConfig
    base_model_prefix = "toy"

    @classmethod
    def build_draft_config(cls, target_config, target_layer_ids=None, hidden_size=64):
        ids = list(target_layer_ids) if target_layer_ids is not None else toy_layer_policy(
            target_config.num_hidden_layers)
        cfg = ToyDraftConfig(vocab_size=target_config.vocab_size, hidden_size=hidden_size,
                             target_hidden_size=target_config.hidden_size, target_layer_ids=ids,
                             architectures=["ToyDraft"])
        cfg.draftsmith = draft_metadata("toy", object_path(cls), target_config, target_layer_ids=ids)
        return cfg

    def __init__(self, config):
        super().__init__(config)
        k, H = len(config.target_layer_ids), config.target_hidden_size
        self.fc = nn.Linear(k * H + H, config.hidden_size)
        self.out = nn.Linear(config.hidden_size, H)
        self.register_buffer("token_prior", torch.zeros(config.vocab_size))
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.1)
            nn.init.zeros_(module.bias)

    def forward(self, feats, embeds):  # (B, T, k·H), (B, T, H) -> (B, T, H)
        return self.out(nn.functional.gelu(self.fc(torch.cat([feats, embeds], dim=-1))))


class ToyObjective:
    """Position a: features at a-1 and token a → predicts token a+1 through the target lm_head."""

    def __init__(self, draft, heads, delay: float = 0.0, nan_after_calls: int = 0, scale: float = 1.0):
        self.draft, self.heads = draft, heads
        self.delay, self.nan_after_calls, self.scale = float(delay), int(nan_after_calls), float(scale)
        self.calls = 0
        self.prepared = None

    def target_request(self):
        return TargetRequest(layer_ids=tuple(self.draft.config.target_layer_ids))

    def prepare(self, token_counts):
        counts = token_counts.to(torch.float32)
        self.prepared = int(token_counts.sum())
        with torch.no_grad():
            self.draft.token_prior.copy_(torch.log((counts + 1) / (counts + 1).sum()))

    def _logits(self, batch, features):
        feats = features.stacked(self.draft.config.target_layer_ids)  # (B, T, k·H)
        prev = torch.cat([torch.zeros_like(feats[:, :1]), feats[:, :-1]], dim=1)  # features at a-1
        embeds = self.heads.embed_tokens(batch["input_ids"])
        hidden = self.draft(prev.float(), embeds.float())
        return self.heads.lm_head(hidden.to(self.heads.lm_head.weight.dtype)).float() + self.draft.token_prior

    def _valid(self, batch):
        mask = batch["loss_mask"][:, 1:].bool() & batch["attention_mask"][:, 1:].bool()
        if "position_ids" in batch:  # never predict across a packed document boundary
            mask &= batch["position_ids"][:, 1:] > 0
        return mask  # (B, T-1): slot a predicts token a+1

    def __call__(self, batch, features):
        if self.draft.training:
            self.calls += 1
            if self.delay:
                time.sleep(self.delay)
        logits = self._logits(batch, features)[:, :-1]
        labels, valid = batch["input_ids"][:, 1:], self._valid(batch)
        ce = nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
        local = valid.sum()
        total, world = local.clone().float(), 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(total)  # global denominator: DDP's gradient mean stays exact
            world = torch.distributed.get_world_size()
        loss = (ce * valid).sum() / total.clamp(min=1) * world * self.scale
        if self.nan_after_calls and self.calls > self.nan_after_calls:
            loss = loss * float("nan")
        correct = ((logits.argmax(-1) == labels) & valid).sum()
        acc = correct.float() / local.clamp(min=1)
        return ObjectiveOutput(loss=loss, metrics={"accuracy": acc.detach(), "tau_sim": 1 + acc.detach()},
                               num_tokens=int(local))

    def acceptance_lengths(self, batch, features):
        logits = self._logits(batch, features)
        hit = (logits[:, :-1].argmax(-1) == batch["input_ids"][:, 1:]).long()
        out = torch.full_like(batch["input_ids"], -1)
        out[:, :-1] = torch.where(self._valid(batch), hit, torch.full_like(hit, -1))
        return out


TOY_ARCHITECTURES = ("Qwen3ForCausalLM", "LlamaForCausalLM", "Qwen2ForCausalLM")


def register_toy():
    """Register the toy method and its draft in-process (call after draftsmith.reset_plugins())."""
    import draftsmith

    draftsmith.register_method(draftsmith.MethodSpec(
        name="toy", summary="test method", objective=ToyObjective,
        layer_policy=object_path(toy_layer_policy), default_options={"scale": 1.0}))
    draftsmith.register_draft(draftsmith.DraftSpec(
        method="toy", architectures=TOY_ARCHITECTURES, draft_cls=ToyDraft))


def launcher(tmp) -> Path:
    """A script running ``draftsmith <args>`` with the toy method registered (works under torchrun);
    ``$DRAFTSMITH_TEST_STEP_DELAY`` seconds of sleep before each toy objective call.

    The toy is registered by import strings (``support.train:...``, with ``tests/`` put on ``sys.path``), so a
    command that fails before training (bad flags, paths, keys) never pays for importing torch.
    """
    script = Path(tmp) / "toy_cli.py"
    script.write_text(
        "import sys\n"
        f"sys.path[:0] = [{str(REPO / 'core')!r}, {str(TESTS)!r}]\n"
        "import draftsmith\n"
        f"m = {__name__!r}\n"
        "draftsmith.register_method(draftsmith.MethodSpec(name='toy', objective=m + ':ToyObjective',\n"
        "    layer_policy=m + ':toy_layer_policy', default_options={'scale': 1.0}))\n"
        "draftsmith.register_draft(draftsmith.DraftSpec(method='toy', draft_cls=m + ':ToyDraft',\n"
        f"    architectures={TOY_ARCHITECTURES!r}))\n"
        "import os, time\n"
        "if os.environ.get('DRAFTSMITH_TEST_STEP_DELAY'):  # slowed steps, so a test can kill a run mid-way\n"
        "    import support.train as t\n"
        "    delay, call = float(os.environ['DRAFTSMITH_TEST_STEP_DELAY']), t.ToyObjective.__call__\n"
        "    t.ToyObjective.__call__ = lambda self, *a, **k: (time.sleep(delay), call(self, *a, **k))[1]\n"
        "from draftsmith.cli import main\n"
        "main(sys.argv[1:])\n")
    return script


def toy_config(tmp, target, data, **overrides) -> dict:
    """A small training config (nested dict) for the toy method."""
    cfg = {
        "method": "toy",
        "target": {"path": str(target)},
        "data": {"train": [str(data)], "seq_len": 96, "eval_fraction": 0.0},
        "train": {"max_steps": 6, "batch_size": 4, "lr": 2e-2, "warmup_ratio": 0.0, "log_every": 1,
                  "eval_every": 0, "save_every": 0, "output_dir": str(Path(tmp) / "run"), "progress": False,
                  "seed": 0},
    }
    for key, value in overrides.items():
        section, _, leaf = key.partition(".")
        if leaf:
            cfg.setdefault(section, {})[leaf] = value
        else:
            cfg[section] = value
    return cfg


def read_metrics(run_dir) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def train_losses(run_dir) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir) if r.get("split") == "train"]


def load_weights(path) -> dict[str, torch.Tensor]:
    """The tensors of ``path/model.safetensors`` (a saved draft)."""
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


def run_train(cfg: dict):
    """Train in process from a nested config dict."""
    from draftsmith.train.config import from_dict
    from draftsmith.train.trainer import train

    return train(from_dict(cfg))


def prepare(cfg: dict, out, dtype: str = "float32", **kw) -> dict:
    """``prepare-features`` in process from a nested config dict; returns the manifest."""
    from draftsmith.train.config import from_dict
    from draftsmith.train.prepare import prepare_features

    return prepare_features(from_dict(cfg), out, dtype=dtype, log=lambda s: None, **kw)
