"""Regenerate through a serving engine: any OpenAI-compatible chat-completions server (vLLM ``vllm serve``,
SGLang, ``transformers serve``, TGI) answers the prompts instead of an in-process ``generate``.

* ``concurrency`` requests in flight (asyncio + ``httpx``); every answer is appended and flushed as it arrives,
  in the in-process path's record format, so the resume rule is the same: ids already in the file are skipped,
  a partial last line is dropped, and the requests in flight when a run dies are asked again.
* transient failures — a refused or dropped connection, a timeout, HTTP 429 and 5xx — are retried with
  exponential backoff and jitter (``max_retries`` times, at most ``max_backoff`` s apart), so a server that
  dies and comes back loses nothing; any other 4xx stops the run with the server's message on one line.
* the model: ``transformers serve DIR`` pins DIR and answers only requests naming it; without ``--model`` the one
  model ``GET /models`` lists is used, and a name the server does not list is refused with the ones it does.
* what the server returns is kept as it returns it: ``reasoning_content`` (servers that parse think blocks put
  the reasoning there, chosen by the model type) goes into the assistant message beside ``content``.
  ``transformers serve`` also trims outer whitespace from ``content``; the record keeps the server's text.

Torch-free.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..errors import ConfigError, DraftsmithError

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class EndpointError(DraftsmithError):
    """The server refused a request for a reason retrying does not fix (one line, the server's words)."""


@dataclasses.dataclass
class EndpointConfig:
    url: str  # the API base, e.g. http://127.0.0.1:8000/v1
    model: str | None = None
    api_key: str | None = None
    concurrency: int = 8
    timeout: float = 600.0  # seconds per request
    max_retries: int = 10
    max_backoff: float = 10.0
    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = 0
    stop: Sequence[str] = ()
    chat_template_kwargs: dict = dataclasses.field(default_factory=dict)  # e.g. enable_thinking (vLLM, SGLang)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(f"--endpoint must be an http(s) URL of an OpenAI-compatible API, got {self.url!r}")
        if self.concurrency < 1 or self.max_tokens < 1 or self.max_retries < 0 or self.timeout <= 0:
            raise ConfigError("--concurrency and --max-new-tokens must be >= 1, --max-retries >= 0, --timeout > 0")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def _backoff(attempt: int, cap: float) -> float:
    return min(cap, 0.5 * 2 ** attempt) * (0.5 + random.random() / 2)


def _server_message(response: Any) -> str:
    try:
        body = response.json()
        err = body.get("error", body) if isinstance(body, dict) else body
        message = err.get("message", err) if isinstance(err, dict) else err
    except ValueError:
        message = response.text
    return " ".join(str(message).split())[:300]


async def _request(client: Any, cfg: EndpointConfig, method: str, path: str, **kwargs: Any) -> Any:
    """One API call with the retry rule; the decoded JSON body."""
    httpx = _httpx()

    for attempt in range(cfg.max_retries + 1):
        try:
            response = await client.request(method, cfg.url + path, headers=cfg.headers, timeout=cfg.timeout,
                                            **kwargs)
        except (httpx.TransportError, httpx.TimeoutException) as exc:  # refused, reset, timed out
            if attempt == cfg.max_retries:
                raise EndpointError(f"{cfg.url}{path}: {type(exc).__name__} after {attempt + 1} attempts "
                                    f"({exc or 'no answer'}); is the server running?") from None
        else:
            if response.status_code < 400:
                try:
                    return response.json()
                except ValueError:
                    raise EndpointError(f"{cfg.url}{path}: the answer is not JSON: {response.text[:200]!r}") \
                        from None
            if response.status_code not in RETRY_STATUS or attempt == cfg.max_retries:
                raise EndpointError(f"{cfg.url}{path}: HTTP {response.status_code}: {_server_message(response)}")
        await asyncio.sleep(_backoff(attempt, cfg.max_backoff))
    raise AssertionError("unreachable")


async def resolve_model(client: Any, cfg: EndpointConfig) -> str:
    """The model to name in requests: ``cfg.model`` if the server lists it, else its only model."""
    body = await _request(client, dataclasses.replace(cfg, max_retries=min(cfg.max_retries, 2)), "GET", "/models")
    served = [m.get("id") for m in body.get("data", []) if isinstance(m, dict)]
    if cfg.model is not None:
        if served and cfg.model not in served:
            raise ConfigError(f"the server at {cfg.url} does not serve model {cfg.model!r}; it serves: "
                              f"{', '.join(map(repr, served))}")
        return cfg.model
    if len(served) != 1:
        raise ConfigError(f"the server at {cfg.url} serves {len(served)} models ({', '.join(map(repr, served))}): "
                          f"name one with --model")
    return served[0]


def _record(prompt: Any, body: dict[str, Any]) -> dict[str, Any]:
    """The in-process path's record for one answer, with what the server returned kept as returned."""
    try:
        choice = body["choices"][0]
        message = choice["message"]
    except (KeyError, IndexError, TypeError):
        raise EndpointError(f"not a chat completion (no choices[0].message): {json.dumps(body)[:200]}") from None
    turn = {"role": "assistant", "content": message.get("content") or ""}
    for key in ("reasoning_content", "reasoning"):  # vLLM / SGLang name it reasoning_content, some servers reasoning
        if message.get(key):
            turn["reasoning_content"] = message[key]
            break
    usage = body.get("usage") or {}
    return {"id": prompt.id, "messages": prompt.messages + [turn],
            "finish_reason": choice.get("finish_reason") or "stop",
            "num_tokens": int(usage.get("completion_tokens") or 0)}


def _httpx() -> Any:
    try:
        import httpx
    except ImportError:
        raise ConfigError("regenerate --endpoint needs httpx: pip install 'draftsmith[endpoint]' (or httpx)") from None
    return httpx


async def _run(prompts: Sequence[Any], out: Path, cfg: EndpointConfig, on_done: Callable[[int], None]) -> int:
    httpx = _httpx()

    limits = httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency)
    async with httpx.AsyncClient(limits=limits) as client:
        model = await resolve_model(client, cfg)
        queue: asyncio.Queue = asyncio.Queue()
        for item in enumerate(prompts):
            queue.put_nowait(item)
        written = 0
        with out.open("a", encoding="utf-8") as f:

            async def worker() -> None:
                nonlocal written
                while not queue.empty():
                    index, prompt = queue.get_nowait()
                    payload = {"model": model, "messages": prompt.messages, "max_tokens": cfg.max_tokens,
                               "temperature": cfg.temperature, "top_p": cfg.top_p, "stream": False}
                    if cfg.seed is not None:
                        payload["seed"] = cfg.seed + index
                    if cfg.stop:
                        payload["stop"] = list(cfg.stop)
                    if cfg.chat_template_kwargs:
                        payload["chat_template_kwargs"] = dict(cfg.chat_template_kwargs)
                    record = _record(prompt, await _request(client, cfg, "POST", "/chat/completions", json=payload))
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
                    f.flush()  # whole lines only: a kill loses the requests in flight, never a written answer
                    written += 1
                    on_done(written)

            tasks = [asyncio.create_task(worker()) for _ in range(min(cfg.concurrency, len(prompts)))]
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
        return written


def regenerate_via_endpoint(prompts: Sequence[Any], out: str | Path, cfg: EndpointConfig) -> int:
    """Answer ``prompts`` (chat :class:`~draftsmith.decode.prompts.Prompt` s not yet in ``out``) through the
    server, appending one record per answer to ``out``; the number written. Progress (rate, ETA) on stderr."""
    from tqdm import tqdm

    out = Path(out)
    t0, total = time.perf_counter(), len(prompts)
    bar = tqdm(total=total, desc="regenerate", unit="prompt", file=sys.stderr, disable=None)
    every = max(1, total // 20)

    def on_done(n: int) -> None:
        bar.update(1)
        if bar.disable and (n % every == 0 or n == total):  # not a terminal: a line per 5 %
            elapsed = time.perf_counter() - t0
            print(f"regenerate: {n}/{total} prompts  {n / elapsed:.2f} prompts/s  "
                  f"eta {elapsed / n * (total - n):.0f} s", file=sys.stderr, flush=True)

    try:
        return asyncio.run(_run(prompts, out, cfg, on_done))
    finally:
        bar.close()
