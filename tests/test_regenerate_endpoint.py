"""`draftsmith regenerate --endpoint` against a real server: `transformers serve` (the OpenAI-compatible server
transformers ships) on the demo target, as a subprocess on 127.0.0.1.

Greedy answers through the server equal the in-process path's (unbatched: left-padded batches of a bf16 target
can flip near-ties; and `transformers serve` trims outer whitespace, so texts are compared stripped); a server
killed and restarted mid-run, and a regenerate killed mid-run and re-run, end with every prompt written exactly
once; an unreachable server and an unknown model name are one line each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from support import REPO
from support.cli import free_port, run_cli, subprocess_env

TARGET = REPO / "examples" / "tiny-target"
PROMPTS = REPO / "examples" / "data" / "prompts-heldout.jsonl"


class Server:
    """`transformers serve TARGET` on 127.0.0.1:port (CPU), restartable on the same port."""

    def __init__(self, port: int, log: Path) -> None:
        self.port, self.log, self.proc = port, log, None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        cli = Path(sys.executable).with_name("transformers")
        cmd = [str(cli)] if cli.exists() else [sys.executable, "-m", "transformers.cli.transformers"]
        env = {**subprocess_env(), "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen([*cmd, "serve", str(TARGET), "--host", "127.0.0.1", "--port", str(self.port),
                                      "--device", "cpu"], stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                     env=env, cwd=self.log.parent)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(self.url + "/models", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"transformers serve did not come up: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(free_port(), tmp_path_factory.mktemp("serve") / "serve.log")
    srv.start()
    yield srv
    srv.kill()


def _regenerate(out: Path, *extra: str) -> list[str]:
    return ["regenerate", "--prompts", str(PROMPTS), "--out", str(out), "--max-new-tokens", "24", *extra]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_greedy_through_the_server_equals_greedy_in_process(server, tmp_path):
    env = subprocess_env()
    res = run_cli(_regenerate(tmp_path / "served.jsonl", "--endpoint", server.url, "--max-prompts", "10",
                              "--concurrency", "4"), env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    res = run_cli(_regenerate(tmp_path / "local.jsonl", "--target", str(TARGET), "--max-prompts", "10",
                              "--batch-size", "1", "--device", "cpu"), env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    served = {r["id"]: r for r in _records(tmp_path / "served.jsonl")}
    local = {r["id"]: r for r in _records(tmp_path / "local.jsonl")}
    assert served.keys() == local.keys() and len(local) == 10
    for key, want in local.items():
        got = served[key]
        assert got["messages"][:-1] == want["messages"][:-1]  # the prompt turns, unchanged
        assert got["messages"][-1]["role"] == "assistant"
        assert got["messages"][-1]["content"].strip() == want["messages"][-1]["content"].strip(), key
        assert got["finish_reason"] == want["finish_reason"]


def _wait_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and path.read_text().count("\n") >= n:
            return
        assert proc.poll() is None, proc.stderr.read()[-2000:] if proc.stderr else "exited"
        time.sleep(0.2)
    raise AssertionError(f"{path} did not reach {n} lines")


def _popen_regenerate(out: Path, url: str, n: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "draftsmith", *_regenerate(out, "--endpoint", url, "--max-prompts", str(n),
                                                             "--concurrency", "2")]
    return subprocess.Popen(cmd, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _exactly_once(path: Path, n: int) -> None:
    ids = [r["id"] for r in _records(path)]
    assert len(ids) == n and len(set(ids)) == n, (len(ids), len(set(ids)))


def test_a_server_killed_and_restarted_mid_run_loses_nothing(server, tmp_path):
    out = tmp_path / "restart.jsonl"
    proc = _popen_regenerate(out, server.url, 12)
    _wait_lines(out, 3, proc)
    server.kill()  # requests in flight fail; the client retries with backoff
    time.sleep(1.0)
    server.start()
    _stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-2000:]
    _exactly_once(out, 12)


def test_a_killed_regenerate_resumes_without_loss_or_duplicates(server, tmp_path):
    out = tmp_path / "resume.jsonl"
    proc = _popen_regenerate(out, server.url, 12)
    _wait_lines(out, 3, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    before = len(_records(out))
    assert 3 <= before < 12
    res = run_cli(_regenerate(out, "--endpoint", server.url, "--max-prompts", "12", "--concurrency", "2"),
                  env=subprocess_env())
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"({before} prompts skipped" in res.stdout
    _exactly_once(out, 12)


def test_bad_endpoints_are_one_line(server, tmp_path):
    env = subprocess_env()
    closed = f"http://127.0.0.1:{free_port()}/v1"
    res = run_cli(_regenerate(tmp_path / "a.jsonl", "--endpoint", closed, "--max-retries", "1"), env=env)
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "is the server running?" in res.stderr
    res = run_cli(_regenerate(tmp_path / "b.jsonl", "--endpoint", server.url, "--model", "no-such-model"), env=env)
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "does not serve model 'no-such-model'" in res.stderr and str(TARGET) in res.stderr
    res = run_cli(_regenerate(tmp_path / "c.jsonl", "--endpoint", server.url, "--target", str(TARGET)), env=env)
    assert res.returncode != 0 and "exactly one of --target" in res.stderr
