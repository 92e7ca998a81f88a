"""Tiny real things for the data / train / offline / distributed tests: a character-level fast tokenizer with a
ChatML template (with and without ``{% generation %}`` tags), tiny random transformers targets saved like real
checkpoints (config + safetensors + tokenizer), and deterministic chat JSONL with a learnable pattern."""

from __future__ import annotations

import json
from pathlib import Path

from draftsmith.data.chat import CHATML_WITH_GENERATION

SPECIALS = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<|mask|>", "<unk>"]
CHARS = [chr(c) for c in range(32, 127)] + ["\n"]

CHATML_GEN = CHATML_WITH_GENERATION
# The same rendering without generation tags (prefix re-rendering finds the assistant tokens).
CHATML_PLAIN = CHATML_GEN.replace("{%- generation %}", "").replace("{%- endgeneration %}", "")


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
