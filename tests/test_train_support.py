"""Shared helpers of the data/train/offline/distributed tests (this file holds no tests).

* a tiny character-level fast tokenizer with a ChatML template (with and without ``{% generation %}`` tags);
* tiny real transformers targets saved to a directory (config + safetensors + tokenizer);
* a "toy" method registered in-process: a real torch draft predicting token ``a+1`` from the target features
  at ``a-1`` and the embedding of token ``a`` through the target lm_head, so its loss really falls. Its
  objective uses global denominators under torch.distributed (DDP-correct), can sleep per step (to kill a run
  mid-way) and can return NaN after N training calls;
* ``launcher(tmp)``: a script that registers the toy method and runs the draftsmith CLI (for subprocesses and
  torchrun).

Other test files import it by path under the fixed name ``draftsmith_train_support`` (their ``support()``), so the
toy classes have one import path; pytest also collects it, harmlessly.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import time
from pathlib import Path

MODULE_NAME = "draftsmith_train_support"
HERE = Path(__file__).resolve()
REPO = HERE.parents[1]

SPECIALS = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<|mask|>", "<unk>"]
CHARS = [chr(c) for c in range(32, 127)] + ["\n"]

CHATML_GEN = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# The same rendering without generation tags (prefix re-rendering finds the assistant tokens).
CHATML_PLAIN = CHATML_GEN.replace("{%- generation %}", "").replace("{%- endgeneration %}", "")


def load():
    """This module, imported once under a fixed name (so the toy classes have one import path)."""
    if MODULE_NAME in sys.modules:
        return sys.modules[MODULE_NAME]
    spec = importlib.util.spec_from_file_location(MODULE_NAME, HERE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE_NAME] = module
    spec.loader.exec_module(module)
    return module


# -- tokenizer and targets ---------------------------------------------------------------------------------------
def make_tokenizer(chat_template: str | None = CHATML_GEN):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()  # characters back to text without separators
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|im_end|>",
                                   unk_token="<unk>", additional_special_tokens=["<|im_start|>", "<|mask|>"])
    if chat_template:
        fast.chat_template = chat_template
    return fast


VOCAB_SIZE = len(SPECIALS) + len(CHARS)  # 101


def tiny_config(arch: str = "qwen3", num_layers: int = 4, vocab_size: int = 128):
    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  pad_token_id=0, eos_token_id=2, bos_token_id=1, tie_word_embeddings=False)
    if arch == "qwen3":
        from transformers import Qwen3Config

        return Qwen3Config(head_dim=8, **common)
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(head_dim=8, **common)
    if arch == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(**common)
    raise ValueError(arch)


def make_target(path, arch: str = "qwen3", num_layers: int = 4, *, tokenizer: bool = True,
                chat_template: str | None = CHATML_GEN, seed: int = 0) -> Path:
    """A tiny random target saved like a real checkpoint (config.json, model.safetensors, tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = Path(path)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, num_layers))
    model.save_pretrained(path)
    if tokenizer:
        make_tokenizer(chat_template).save_pretrained(path)
    return path


# -- data ----------------------------------------------------------------------------------------------------------
WORDS = ["alpha", "beta", "gamma", "delta", "one", "two", "three", "red", "blue", "green", "cat", "dog"]


def make_chat_data(path, n: int = 24, seed: int = 0, turns: int = 1) -> Path:
    """Deterministic OpenAI-messages JSONL whose answers follow a learnable pattern (the question repeated)."""
    import random

    rng = random.Random(seed)
    with open(path, "w") as fh:
        for _ in range(n):
            messages = [{"role": "system", "content": "be brief"}]
            for _t in range(turns):
                q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 4)))
                messages += [{"role": "user", "content": q}, {"role": "assistant", "content": q + " " + q}]
            fh.write(json.dumps({"messages": messages}) + "\n")
    return Path(path)


# -- the toy method ------------------------------------------------------------------------------------------------
import torch  # noqa: E402  (the toy method needs torch; the helpers above do not)

# Tiny models on the shared 2-core test machine run ~10x faster single threaded than with two contending
# OpenMP threads; every test process that loads these helpers uses one thread.
torch.set_num_threads(1)
from torch import nn  # noqa: E402
from transformers import PretrainedConfig, PreTrainedModel  # noqa: E402

from draftsmith.checkpoint import draft_metadata  # noqa: E402
from draftsmith.method import ObjectiveOutput, TargetRequest  # noqa: E402


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
        cfg.draftsmith = draft_metadata("toy", f"{MODULE_NAME}:ToyDraft", target_config, target_layer_ids=ids)
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
        layer_policy=f"{MODULE_NAME}:toy_layer_policy", default_options={"scale": 1.0}))
    draftsmith.register_draft(draftsmith.DraftSpec(
        method="toy", architectures=TOY_ARCHITECTURES, draft_cls=ToyDraft))


def launcher(tmp) -> Path:
    """A script running ``draftsmith <args>`` with the toy method registered (works under torchrun).

    The toy is registered by import strings and this file is found by a meta-path finder, so a command that
    fails before training (bad flags, paths, keys) never pays for importing torch.
    """
    script = Path(tmp) / "toy_cli.py"
    script.write_text(
        "import importlib.abc, importlib.util, sys\n"
        f"sys.path.insert(0, {str(REPO / 'core')!r})\n"
        "class Finder(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        f"        if name == {MODULE_NAME!r}:\n"
        f"            return importlib.util.spec_from_file_location(name, {str(HERE)!r})\n"
        "sys.meta_path.append(Finder())\n"
        "import draftsmith\n"
        f"m = {MODULE_NAME!r}\n"
        "draftsmith.register_method(draftsmith.MethodSpec(name='toy', objective=m + ':ToyObjective',\n"
        "    layer_policy=m + ':toy_layer_policy', default_options={'scale': 1.0}))\n"
        "draftsmith.register_draft(draftsmith.DraftSpec(method='toy', draft_cls=m + ':ToyDraft',\n"
        f"    architectures={TOY_ARCHITECTURES!r}))\n"
        "from draftsmith.cli import main\n"
        "main(sys.argv[1:])\n")
    return script


def subprocess_env() -> dict:
    """Environment for CLI subprocesses: this checkout first on the path, one thread per process."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("DRAFTSMITH_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "core"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


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
