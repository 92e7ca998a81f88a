"""Read-only views over the live registry, for the names NeMo AutoModel users know (``EAGLE3_DRAFT_REGISTRY``,
``DFLASH_DRAFT_REGISTRY`` ...). Torch-free; a view discovers plugins only when first read."""

from __future__ import annotations

from typing import Any, Iterator

from .plugins import get_registry
from .registry import Registry


class DraftRegistryView:
    """A read-only ``architecture -> spec`` mapping over the live registry for one method.

    Plugins expose these under the names NeMo AutoModel users know (``EAGLE3_DRAFT_REGISTRY`` ...); they
    always reflect what is installed, including third-party additions.
    """

    def __init__(self, method: str) -> None:
        self.method = method

    def _registry(self) -> Registry:
        return get_registry()

    def __getitem__(self, architecture: str) -> Any:
        reg = self._registry()
        if not reg.candidates(self.method, architecture):
            raise KeyError(architecture)
        return reg.resolve(self.method, [architecture])

    def get(self, architecture: str, default: Any = None) -> Any:
        try:
            return self[architecture]
        except KeyError:
            return default

    def __contains__(self, architecture: object) -> bool:
        return isinstance(architecture, str) and bool(self._registry().candidates(self.method, architecture))

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def keys(self) -> list[str]:
        return self._registry().architectures(self.method)

    def items(self) -> list[tuple[str, Any]]:
        return [(a, self[a]) for a in self.keys()]

    def __repr__(self) -> str:
        return f"DraftRegistryView({self.method!r}, {self.keys()})"
