"""Chat rendering and the assistant-only loss mask.

Two ways to find the assistant tokens, chosen per template:

* **generation tags** — when the template marks assistant text with ``{% generation %}…{% endgeneration %}``,
  transformers' ``apply_chat_template(return_assistant_tokens_mask=True)`` returns the exact mask;
* **prefix re-rendering** — otherwise, for every assistant message *i*, the conversation is rendered up to the
  generation prompt before it (``messages[:i]`` + ``add_generation_prompt``) and through it
  (``messages[:i+1]``); the characters between the two are the assistant's, mapped to tokens through the fast
  tokenizer's offsets (or by re-tokenising the prefixes with a slow tokenizer). Whatever the template appends
  after the message (end-of-turn token, newline) is supervised too: the draft must learn to stop.

Templates that render an earlier turn differently once later turns exist (e.g. dropping a reasoning block)
cannot use prefix re-rendering: that is a clear error suggesting a template with generation tags
(``--chat-template FILE``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError

GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")

# ChatML (Qwen's turn format, without tools/thinking) with generation tags around each assistant answer
# *including* its <|im_end|> (the draft must learn to stop): the template of the shipped tiny target and of the
# tests' tokenizers, and a starting point for a target whose own template has no tags (``data.chat_template``).
CHATML_WITH_GENERATION = (
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


# Qwen3's thinking format with generation tags: the assistant turns after the last user message carry their
# reasoning in a <think> block (``reasoning_content``, or an empty block), earlier turns their answer only (Qwen3
# drops past reasoning). With ``enable_thinking=False`` (a chat-template keyword, ``data.chat_template_kwargs``)
# the template itself writes the empty block into the generation prompt, so it is outside the tags: supervised is
# exactly what the target generates — its think block and answer in thinking mode, the answer alone otherwise.
QWEN3_THINKING_WITH_GENERATION = (
    "{%- set ns = namespace(last_query=-1) %}"
    "{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.last_query = loop.index0 %}"
    "{%- endif %}{%- endfor %}"
    "{%- set thinking = not (enable_thinking is defined and enable_thinking is false) %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- set reasoning = (message.get('reasoning_content') or '') | trim %}"
    "{{- '<|im_start|>assistant\n' }}"
    "{%- if loop.index0 > ns.last_query and thinking %}"
    "{%- generation %}{{- '<think>\n' + reasoning + '\n</think>\n\n' + message['content'] | trim + '<|im_end|>' }}"
    "{%- endgeneration %}"
    "{%- elif loop.index0 > ns.last_query %}"
    "{%- if reasoning %}{{- raise_exception('a reasoning_content with enable_thinking=false: the target did not "
    "think in this turn') }}{%- endif %}"
    "{{- '<think>\n\n</think>\n\n' }}"
    "{%- generation %}{{- message['content'] | trim + '<|im_end|>' }}{%- endgeneration %}"
    "{%- else %}"
    "{%- generation %}{{- message['content'] | trim + '<|im_end|>' }}{%- endgeneration %}"
    "{%- endif %}"
    "{{- '\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}"
    "{%- if not thinking %}{{- '<think>\n\n</think>\n\n' }}{%- endif %}{%- endif %}"
)
# names ``data.chat_template`` / ``--chat-template`` accept besides a file or an inline Jinja string
BUILTIN_TEMPLATES = {"chatml": CHATML_WITH_GENERATION, "qwen3-thinking": QWEN3_THINKING_WITH_GENERATION}


def resolve_template(tokenizer: Any, override: str | Path | None = None) -> str | None:
    """The chat template text in use: ``override`` (a file path, a Jinja string or a name of
    :data:`BUILTIN_TEMPLATES`), else the tokenizer's."""
    if override:
        text = str(override)
        if text in BUILTIN_TEMPLATES:
            return BUILTIN_TEMPLATES[text]
        if "{%" in text or "{{" in text:  # an inline Jinja template, not a file name
            return text
        p = Path(text)
        if p.is_file():
            return p.read_text()
        raise ConfigError(f"chat template file {text!r} does not exist")
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # named templates: the default one renders conversations
        template = template.get("default") or next(iter(template.values()), None)
    return template or None


class ChatEncoder:
    """Renders conversations with a chat template and marks the assistant tokens."""

    def __init__(self, tokenizer: Any, template: str, template_kwargs: dict | None = None) -> None:
        if not template:
            raise ConfigError("the target's tokenizer has no chat template; pass one with --chat-template FILE "
                              "(data.chat_template)")
        self.tokenizer = tokenizer
        self.template = template
        self.template_kwargs = dict(template_kwargs or {})  # e.g. enable_thinking=False (data.chat_template_kwargs)
        self.mode = "generation" if GENERATION_TAG.search(template) else "prefix"
        if self.mode == "generation" and not getattr(tokenizer, "is_fast", False):
            self.mode = "prefix"  # transformers maps generation spans to tokens with a fast tokenizer only

    def _render(self, messages: list[dict], tools: Any, *, add_generation_prompt: bool = False) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=tools, chat_template=self.template,
                                                  tokenize=False, add_generation_prompt=add_generation_prompt,
                                                  **self.template_kwargs)

    def encode(self, messages: list[dict], tools: Any = None) -> tuple[list[int], list[int]]:
        """``(input_ids, loss_mask)`` of one conversation; raises ValueError if the template misbehaves."""
        if self.mode == "generation":
            out = self.tokenizer.apply_chat_template(
                messages, tools=tools, chat_template=self.template, tokenize=True, return_dict=True,
                return_assistant_tokens_mask=True, **self.template_kwargs)
            ids = list(out["input_ids"])
            return ids, [int(m) for m in out["assistant_masks"]]
        return self._encode_by_prefixes(messages, tools)

    def _assistant_spans(self, messages: list[dict], tools: Any, text: str) -> list[tuple[int, int]]:
        spans = []
        for i, msg in enumerate(messages):
            if msg["role"] != "assistant":
                continue
            before = self._render(messages[:i], tools, add_generation_prompt=True) if i else ""
            through = self._render(messages[: i + 1], tools)
            if not (text.startswith(before) and text.startswith(through) and len(through) >= len(before)):
                raise ValueError(
                    f"the chat template renders message {i} differently once later turns follow, so the "
                    f"assistant tokens cannot be found by prefix re-rendering; use a template with "
                    f"{{% generation %}} tags (--chat-template FILE)")
            spans.append((len(before), len(through)))
        return spans

    def _encode_by_prefixes(self, messages: list[dict], tools: Any) -> tuple[list[int], list[int]]:
        tok = self.tokenizer
        text = self._render(messages, tools)
        spans = self._assistant_spans(messages, tools, text)
        if getattr(tok, "is_fast", False):
            enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
            ids = list(enc["input_ids"])
            mask = [int(any(s <= start < e for s, e in spans) and end > start)
                    for start, end in enc["offset_mapping"]]
            return ids, mask
        ids = tok(text, add_special_tokens=False)["input_ids"]
        mask = [0] * len(ids)
        for s, e in spans:  # slow tokenizer: count the tokens of each rendered prefix
            lo = len(tok(text[:s], add_special_tokens=False)["input_ids"])
            hi = len(tok(text[:e], add_special_tokens=False)["input_ids"])
            for j in range(lo, min(hi, len(ids))):
                mask[j] = 1
        return list(ids), mask
