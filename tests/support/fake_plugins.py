"""Fake entry points and distributions for plugin-loading unit tests (no packaging needed)."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path


class FakeDist:
    def __init__(self, name: str, version: str = "1.0") -> None:
        self.metadata = {"Name": name}
        self.version = version
        self.name = name


class FakeEntryPoint:
    """Quacks like importlib.metadata.EntryPoint (name, value, group, dist, load)."""

    group = "draftsmith"

    def __init__(self, name: str, value: str, dist: str | None = None, version: str = "1.0") -> None:
        self.name, self.value = name, value
        self.dist = FakeDist(dist or f"dist-{name}", version)

    def load(self):
        module_name, _, attr = self.value.partition(":")
        module = importlib.import_module(module_name)
        return getattr(module, attr) if attr else module


def write_module(tmp_path: Path, name: str, source: str) -> str:
    """Write a plugin module into tmp_path (which must be on sys.path) and return its name."""
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    sys.modules.pop(name, None)
    importlib.invalidate_caches()
    return name
