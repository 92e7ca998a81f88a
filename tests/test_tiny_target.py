"""Quick checks of the shipped demo target ``examples/tiny-target`` (built by scripts/make_tiny_target.py)."""

import json
import math
from pathlib import Path

import pytest
import torch

TARGET = Path(__file__).resolve().parent.parent / "examples" / "tiny-target"


@pytest.fixture(scope="module")
def target():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # bf16 on disk; upcasting to fp32 is lossless and gives exact, fast CPU math.
    model = AutoModelForCausalLM.from_pretrained(TARGET, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(TARGET)
    return model, tokenizer


def test_files_and_config(target):
    model, tokenizer = target
    config = json.loads((TARGET / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    assert config["dtype"] == "bfloat16"  # what model.safetensors stores
    assert (TARGET / "model.safetensors").stat().st_size <= 12_000_000
    assert 5_000_000 <= sum(p.numel() for p in model.parameters()) <= 10_000_000
    assert model.config.tie_word_embeddings is False
    assert model.config.num_hidden_layers == 8
    assert model.config.max_position_embeddings >= 1024
    assert model.config.vocab_size == len(tokenizer)


def test_special_tokens(target):
    model, tokenizer = target
    mask_id = tokenizer.mask_token_id
    assert tokenizer.convert_ids_to_tokens(mask_id) == "<|mask|>"
    assert 0 <= mask_id < model.config.vocab_size
    assert mask_id not in (tokenizer.pad_token_id, tokenizer.eos_token_id)
    assert tokenizer.eos_token == "<|im_end|>" == tokenizer.convert_ids_to_tokens(model.config.eos_token_id)
    assert tokenizer.pad_token_id == model.config.pad_token_id
    assert model.generation_config.eos_token_id == model.config.eos_token_id


def test_chat_template_assistant_mask(target):
    _, tokenizer = target
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What does `a.b` do?"},
        {"role": "assistant", "content": "Nothing."},
    ]
    enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    ids, mask = enc["input_ids"], enc["assistant_masks"]
    answer = [i for i, m in zip(ids, mask) if m]
    assert tokenizer.decode(answer) == "Nothing.<|im_end|>"  # the answer and its stop token, nothing else
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_greedy_generate(target):
    model, tokenizer = target
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What does `textwrap.indent` do?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=20, do_sample=False)
    new = out[0, prompt["input_ids"].shape[1]:]
    assert 0 < len(new) <= 20
    assert tokenizer.mask_token_id not in new.tolist()
    assert tokenizer.decode(new, skip_special_tokens=True).strip()


def test_heldout_loss_far_below_uniform(target):
    model, tokenizer = target
    rows = [json.loads(line) for line in (TARGET / "heldout-samples.jsonl").read_text().splitlines()][:3]
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            enc = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True,
                                                return_assistant_tokens_mask=True)
            ids = torch.tensor([enc["input_ids"]])
            predicted = torch.tensor(enc["assistant_masks"][1:], dtype=torch.bool)
            logits = model(input_ids=ids).logits[0, :-1]
            nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
            total += nll[predicted].sum().item()
            count += int(predicted.sum())
    assert count > 0
    assert total / count < 0.6 * math.log(model.config.vocab_size)
