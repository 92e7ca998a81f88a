"""The offline feature cache written by ``draftsmith prepare-features`` and read by ``train.offline_features``.

Layout of a cache directory (no pickle anywhere)::

    manifest.json                    what was captured, from what, and how (checked against the run)
    heads.safetensors                the target's embedding and lm_head (offline runs never load the target)
    train/shard-R00-000000.safetensors, ...   (and eval/ when the run has a separate eval file)

A shard holds a run of whole samples, concatenated along the token axis (no padding on disk):
``sample_index`` (n,), ``offsets`` (n+1,), ``input_ids`` (N,), ``loss_mask`` (N,), ``hidden.<layer id>`` (N, H)
for every captured layer and ``final_hidden`` (N, H) when captured, in the storage dtype (bf16/fp16 halve the
disk of fp32). Samples are read back by slicing the memory-mapped shard.

Slightly over ~300 lines: writer, reader and manifest check of one on-disk format, kept in one place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import DataError

FORMAT = "draftsmith-features"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
HEADS = "heads.safetensors"
STORAGE_DTYPES = ("bfloat16", "float16", "float32")


def feature_name(key: int | str) -> str:
    """Tensor name of a feature key: a layer id or ``"final"``."""
    return "final_hidden" if key == "final" else f"hidden.{int(key)}"


# -- hashing -----------------------------------------------------------------------------------------------------
def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str | None) -> str | None:
    return hashlib.sha256(text.encode("utf-8")).hexdigest() if text is not None else None


def sha256_files(paths: Iterable[str | Path]) -> str:
    """One digest over several files (name-independent, order-dependent)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(sha256_file(p).encode())
    return h.hexdigest()


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja",
                   "chat_template.json")


def target_identity(target_path: str | Path) -> dict[str, Any]:
    """Hashes that identify a target directory without reading its weights."""
    path = Path(target_path)
    tok_files = [path / n for n in TOKENIZER_FILES if (path / n).is_file()]
    return {
        "target_path": str(path.resolve()),
        "target_config_sha256": sha256_file(path / "config.json"),
        "tokenizer_sha256": sha256_files(tok_files) if tok_files else None,
    }


def data_identity(files: Sequence[str | Path]) -> dict[str, Any]:
    return {"data_files": [{"path": str(Path(f).resolve()), "sha256": sha256_file(f)} for f in files],
            "data_sha256": sha256_files(files)}


# -- manifest checks ---------------------------------------------------------------------------------------------
class ManifestMismatch(DataError):
    """The cache was built for a different run; the message names the field."""


def check_manifest(manifest: Mapping[str, Any], expected: Mapping[str, Any], *, where: str) -> None:
    """Refuse a cache whose manifest differs from the run in any field of ``expected``.

    Special fields: ``layer_ids`` passes when the cache holds every requested layer; ``final_hidden`` passes
    when the cache has it or the run does not need it; ``draftsmith_version`` compares major.minor.
    """
    if manifest.get("format") != FORMAT:
        raise ManifestMismatch(f"{where}: not a draftsmith feature cache (format {manifest.get('format')!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ManifestMismatch(f"{where}: field 'format_version' is {manifest.get('format_version')!r}, this "
                               f"draftsmith reads {FORMAT_VERSION}; rebuild it with `draftsmith prepare-features`")
    for field, want in expected.items():
        have = manifest.get(field)
        if field == "layer_ids":
            missing = [i for i in want if i not in (have or [])]
            if missing:
                raise ManifestMismatch(f"{where}: field 'layer_ids' is {have}, the run needs layers {list(want)} "
                                       f"(missing {missing}); rebuild the cache for this method/draft")
            continue
        if field == "final_hidden":
            if want and not have:
                raise ManifestMismatch(f"{where}: field 'final_hidden' is false, the run needs the final hidden "
                                       f"state; rebuild the cache for this method")
            continue
        if field == "draftsmith_version":
            if str(have).split(".")[:2] != str(want).split(".")[:2]:
                raise ManifestMismatch(f"{where}: field 'draftsmith_version' is {have!r}, this is draftsmith "
                                       f"{want}; rebuild the cache")
            continue
        if field == "chat_template_kwargs":
            have = have or {}  # caches written before the field had none
        if have != want:
            raise ManifestMismatch(f"{where}: field {field!r} is {_short(have)}, the run has {_short(want)}; "
                                   f"the cache was built for a different run — rebuild it or fix the config")


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


# -- writing -----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _Pending:
    sample_index: list[int] = dataclasses.field(default_factory=list)
    ids: list[Any] = dataclasses.field(default_factory=list)
    masks: list[Any] = dataclasses.field(default_factory=list)
    feats: dict[Any, list[Any]] = dataclasses.field(default_factory=dict)
    nbytes: int = 0


class ShardWriter:
    """Buffers samples of one split and writes ``shard-R<rank>-<k>.safetensors`` files of ~``shard_bytes``."""

    def __init__(self, out_dir: str | Path, split: str, dtype: str, *, rank: int = 0,
                 shard_bytes: int = 256 << 20) -> None:
        if dtype not in STORAGE_DTYPES:
            raise DataError(f"feature storage dtype must be one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
        self.dir = Path(out_dir) / split
        self.dir.mkdir(parents=True, exist_ok=True)
        self.split, self.dtype, self.rank, self.shard_bytes = split, dtype, rank, shard_bytes
        self.shards: list[dict[str, Any]] = []
        self._pending = _Pending()

    def add(self, sample_index: int, input_ids: Any, loss_mask: Any, features: Mapping[Any, Any]) -> None:
        """One sample: ``input_ids``/``loss_mask`` (L,) and ``features[key]`` (L, H) torch tensors."""
        import torch

        dtype = getattr(torch, self.dtype)
        p = self._pending
        p.sample_index.append(int(sample_index))
        p.ids.append(torch.as_tensor(input_ids, dtype=torch.int32).cpu())
        p.masks.append(torch.as_tensor(loss_mask, dtype=torch.uint8).cpu())
        for key, value in features.items():
            t = value.detach().to("cpu", dtype).contiguous()
            p.feats.setdefault(key, []).append(t)
            p.nbytes += t.numel() * t.element_size()
        if p.nbytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        import torch
        from safetensors.torch import save_file

        p = self._pending
        if not p.sample_index:
            return
        lengths = torch.tensor([len(t) for t in p.ids], dtype=torch.int64)
        tensors = {
            "sample_index": torch.tensor(p.sample_index, dtype=torch.int64),
            "offsets": torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]),
            "input_ids": torch.cat(p.ids),
            "loss_mask": torch.cat(p.masks),
        }
        for key, parts in p.feats.items():
            tensors[feature_name(key)] = torch.cat(parts)
        name = f"shard-R{self.rank:02d}-{len(self.shards):06d}.safetensors"
        tmp = self.dir / f".{name}.tmp"
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "dtype": self.dtype})
        os.replace(tmp, self.dir / name)
        self.shards.append({"file": f"{self.split}/{name}", "num_samples": len(p.sample_index),
                            "num_tokens": int(lengths.sum()), "bytes": (self.dir / name).stat().st_size})
        self._pending = _Pending()

    def close(self) -> list[dict[str, Any]]:
        self.flush()
        return self.shards


def save_heads(out_dir: str | Path, heads: Any, dtype: Any = None) -> dict[str, Any]:
    """Write the target's embedding/lm_head to ``heads.safetensors``; returns the manifest's ``heads`` block."""
    from safetensors.torch import save_file

    def cpu(t: Any) -> Any:
        return t.detach().to("cpu", dtype or t.dtype).contiguous()

    tensors = {"embed_tokens.weight": cpu(heads.embed_tokens.weight), "lm_head.weight": cpu(heads.lm_head.weight)}
    if getattr(heads.lm_head, "bias", None) is not None:
        tensors["lm_head.bias"] = cpu(heads.lm_head.bias)
    save_file(tensors, str(Path(out_dir) / HEADS), metadata={"format": FORMAT})
    scale = getattr(heads.embed_tokens, "embed_scale", None)
    return {"file": HEADS, "vocab_size": int(heads.vocab_size), "pad_token_id": heads.pad_token_id,
            "eos_token_ids": list(heads.eos_token_ids),
            "embed_scale": float(scale) if scale is not None else None,
            "logit_scale": float(heads.logit_scale), "logit_softcap": heads.logit_softcap}


# -- reading -----------------------------------------------------------------------------------------------------
class FeatureCache:
    """A cache directory: its manifest, splits and heads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise DataError(f"offline features {str(self.path)!r} have no {MANIFEST}: not a `draftsmith "
                            f"prepare-features` output (or it did not finish)")
        try:
            self.manifest = json.loads(manifest.read_text())
        except json.JSONDecodeError as exc:
            raise DataError(f"{manifest}: invalid JSON ({exc})") from None
        for split in self.manifest.get("splits", {}).values():
            for shard in split.get("shards", []):
                if not (self.path / shard["file"]).is_file():
                    raise DataError(f"offline features {str(self.path)!r}: shard {shard['file']} is missing")

    @property
    def feature_keys(self) -> list[Any]:
        keys: list[Any] = list(self.manifest["layer_ids"])
        return keys + (["final"] if self.manifest.get("final_hidden") else [])

    def has_split(self, name: str) -> bool:
        return name in self.manifest.get("splits", {})

    def split(self, name: str) -> "CacheSplit":
        if not self.has_split(name):
            raise DataError(f"offline features {str(self.path)!r} have no {name!r} split "
                            f"(splits: {', '.join(self.manifest.get('splits', {})) or 'none'})")
        return CacheSplit(self.path, self.manifest["splits"][name])

    def heads(self, device: Any = "cpu") -> Any:
        """The target heads stored beside the features, as a frozen :class:`~draftsmith.method.TargetHeads`."""
        import torch
        from safetensors.torch import load_file
        from torch import nn

        from ..method import TargetHeads
        from .dataset import ScaledEmbedding

        info = self.manifest["heads"]
        t = load_file(str(self.path / info["file"]), device=str(device))
        embed_w, head_w = t["embed_tokens.weight"], t["lm_head.weight"]
        embed = ScaledEmbedding.from_weight(embed_w, info.get("embed_scale"))
        head = nn.Linear(head_w.shape[1], head_w.shape[0], bias="lm_head.bias" in t, device=device,
                         dtype=head_w.dtype)
        with torch.no_grad():
            head.weight.copy_(head_w)
            if "lm_head.bias" in t:
                head.bias.copy_(t["lm_head.bias"])
        for m in (embed, head):
            m.requires_grad_(False)
        return TargetHeads(embed_tokens=embed, lm_head=head, vocab_size=int(info["vocab_size"]),
                           pad_token_id=info.get("pad_token_id"), eos_token_ids=tuple(info.get("eos_token_ids") or ()),
                           logit_scale=float(info.get("logit_scale", 1.0)), logit_softcap=info.get("logit_softcap"))


class CacheSplit:
    """Samples of one split, read from their shards by slicing (memory-mapped)."""

    def __init__(self, root: Path, info: Mapping[str, Any]) -> None:
        from safetensors import safe_open

        self.root, self.info = root, info
        self._handles: dict[str, Any] = {}
        self._where: dict[int, tuple[str, int, int]] = {}  # sample index -> (shard file, start, end)
        self._ids: dict[int, np.ndarray] = {}
        self._masks: dict[int, np.ndarray] = {}
        for shard in info["shards"]:
            with safe_open(str(root / shard["file"]), framework="np") as f:
                index, offsets = f.get_tensor("sample_index"), f.get_tensor("offsets")
                ids, masks = f.get_tensor("input_ids"), f.get_tensor("loss_mask")
            for j, s in enumerate(index.tolist()):
                lo, hi = int(offsets[j]), int(offsets[j + 1])
                self._where[s] = (shard["file"], lo, hi)
                self._ids[s] = ids[lo:hi].astype(np.int64)
                self._masks[s] = masks[lo:hi].astype(np.uint8)
        n = int(info["num_samples"])
        if sorted(self._where) != list(range(n)):
            raise DataError(f"offline features {str(root)!r}: shards hold {len(self._where)} samples, the "
                            f"manifest says {n}; the cache is incomplete — rebuild it")

    def __len__(self) -> int:
        return len(self._where)

    def samples(self) -> list[Any]:
        from .samples import Sample

        return [Sample(self._ids[i], self._masks[i], f"{self.root}#{i}") for i in range(len(self))]

    def features(self, index: int, keys: Sequence[Any]) -> dict[Any, Any]:
        """``{key: (L, H) tensor}`` of sample ``index`` in the storage dtype."""
        from safetensors import safe_open

        file, lo, hi = self._where[index]
        handle = self._handles.get(file)
        if handle is None:
            handle = self._handles[file] = safe_open(str(self.root / file), framework="pt")
        return {key: handle.get_slice(feature_name(key))[lo:hi] for key in keys}

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen shards themselves
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state
