"""Prompt files for ``draftsmith eval`` and ``draftsmith regenerate``: JSONL, one prompt per line.

Each line is a JSON object with either

* ``"messages"``: OpenAI chat messages (``[{"role": ..., "content": ...}, ...]``); trailing assistant turns
  are dropped, so a training/regenerated conversation file also works as a prompt file. The target's chat
  template is applied with ``add_generation_prompt=True``;
* ``"text"`` (or ``"prompt"``): raw text, tokenised as is (no chat template).

An optional ``"id"`` names the prompt (default: a hash of its content; ``regenerate`` uses it to resume).
Malformed lines raise :class:`~draftsmith.errors.DataError` naming ``file:line``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import DataError


@dataclasses.dataclass
class Prompt:
    line: int  # 1-based line in the file
    messages: list[dict[str, Any]] | None = None
    text: str | None = None
    id: str = ""

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


def _content_id(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def _parse(record: Any, where: str, line: int) -> Prompt:
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object with 'messages' or 'text', got {type(record).__name__}")
    given_id = record.get("id")
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: 'messages' must be a non-empty list of {{role, content}} objects")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or \
                    not isinstance(m.get("content"), str):
                raise DataError(f"{where}: message {i} must be an object with string 'role' and 'content'")
        while messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]  # the turn to generate
        if not messages:
            raise DataError(f"{where}: only assistant messages; nothing to prompt with")
        return Prompt(line=line, messages=messages, id=str(given_id) if given_id is not None else
                      _content_id(messages))
    for key in ("text", "prompt"):
        if key in record:
            text = record[key]
            if not isinstance(text, str) or not text:
                raise DataError(f"{where}: '{key}' must be a non-empty string")
            return Prompt(line=line, text=text, id=str(given_id) if given_id is not None else _content_id(text))
    raise DataError(f"{where}: no 'messages' or 'text' field (keys: {sorted(record)})")


def read_prompts(path: str | Path, limit: int | None = None) -> list[Prompt]:
    """Parse a prompt file; ``limit`` keeps the first N prompts."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompt file {str(path)!r} does not exist")
    prompts: list[Prompt] = []
    with path.open(encoding="utf-8") as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                record = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: invalid JSON ({exc.msg})") from None
            prompts.append(_parse(record, where, line_no))
            if limit is not None and len(prompts) >= limit:
                break
    if not prompts:
        raise DataError(f"prompt file {str(path)!r} holds no prompts")
    return prompts


def prompt_text(prompt: Prompt, tokenizer: Any, template_kwargs: dict | None = None) -> str:
    """The exact text the target continues (chat template applied to message prompts)."""
    if not prompt.is_chat:
        return prompt.text
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"line {prompt.line}: a 'messages' prompt needs a chat template, and the target's "
                        f"tokenizer has none (pass --chat-template FILE or use {{\"text\": ...}} prompts)")
    return tokenizer.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True,
                                         **(template_kwargs or {}))


def encode_prompt(prompt: Prompt, tokenizer: Any, template_kwargs: dict | None = None) -> list[int]:
    """Token ids of a prompt. Chat text already carries the template's special tokens (no BOS added twice);
    raw text gets the tokenizer's usual special tokens. ``template_kwargs``: keywords the chat template reads
    (``enable_thinking``)."""
    ids = tokenizer(prompt_text(prompt, tokenizer, template_kwargs),
                    add_special_tokens=not prompt.is_chat)["input_ids"]
    if not ids:
        raise DataError(f"line {prompt.line}: the prompt encodes to no tokens")
    return list(ids)
