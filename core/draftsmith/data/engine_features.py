"""Features a serving engine captured, read as a draftsmith feature source: speculators' offline layout.

speculators (0.9) trains from hidden states vLLM's ``extract_hidden_states`` method wrote, in this layout::

    DIR/                      a ``datasets`` ``save_to_disk`` directory: columns input_ids, loss_mask, seq_len
    DIR/hidden_states/hs_<i>.safetensors     one per row i: token_ids (T,), hidden_states (T, S, H)

The ``S`` slots follow the layer ids given to vLLM (``eagle_aux_hidden_state_layer_ids``), in that order, in
vLLM's convention: id ``e`` is the *input* of decoder layer ``e`` (``e = 0`` the embedding output, ``e =
num_layers`` the last layer's output, before the final norm). speculators splits the last slot off as the
verifier's last hidden state and applies the final norm itself. In draftsmith's output-of-layer convention
(DESIGN §6) engine id ``e`` is layer id ``e - 1``, and our ``final_hidden`` is ``final_norm(slot of e =
num_layers)``. The files do not record the ids: whoever ran the extraction must say them.

Rows whose ``token_ids`` differ from ``input_ids`` are skipped by speculators; here they are bad data (an
error naming the row, or skipped with ``data.on_bad_data: skip``), as are missing files, wrong shapes and
non-finite values. Only safetensors are read.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import ConfigError, DataError

SPECULATORS = "speculators"


def engine_slots(engine_layer_ids: Sequence[int], num_layers: int) -> dict[Any, int]:
    """``{draftsmith key: slot}`` of the files' slots: layer id ``e - 1`` per engine id ``e``, and ``"final"``
    (post-norm, computed by the importer) for the slot of ``e = num_layers``."""
    ids = [int(e) for e in engine_layer_ids]
    if not ids:
        raise ConfigError("--engine-layer-ids is empty: give the layer ids the engine captured, in file order")
    if len(set(ids)) != len(ids) or min(ids) < 0 or max(ids) > num_layers:
        raise ConfigError(f"--engine-layer-ids {ids} must be distinct engine ids in [0, {num_layers}] (vLLM's "
                          f"convention: e = input of decoder layer e, {num_layers} = the last layer's output)")
    slots: dict[Any, int] = {e - 1: s for s, e in enumerate(ids)}
    if num_layers in ids:
        slots["final"] = ids.index(num_layers)
    return slots


def missing_keys(slots: dict[Any, int], layer_ids: Sequence[int], final_hidden: bool, num_layers: int) -> str:
    """What the run needs that the files lack, as a sentence ('' when nothing is missing)."""
    lacking = [i for i in layer_ids if i not in slots]
    parts = []
    if lacking:
        parts.append(f"layers {lacking} (engine ids {[i + 1 for i in lacking]})")
    if final_hidden and "final" not in slots:
        parts.append(f"the final hidden state (engine id {num_layers}, the last layer's output)")
    return " and ".join(parts)


@dataclasses.dataclass
class EngineSample:
    row: int  # 0-based row of the dataset = file index
    input_ids: Any  # (T,) int64 numpy
    loss_mask: Any  # (T,) uint8 numpy
    hidden: Any  # (T, S, H) torch tensor, the file's dtype


class SpeculatorsFeatures:
    """The rows of a speculators offline directory with their hidden-state files, validated one by one."""

    def __init__(self, path: str | Path, hidden_states_dir: str | Path | None = None) -> None:
        from .columnar import dataset_dir_files, is_dataset_dict_dir, is_dataset_dir

        self.path = Path(path)
        if not self.path.is_dir():
            raise DataError(f"speculators features {str(self.path)!r} " +
                            ("do not exist" if not self.path.exists() else "is not a directory"))
        if is_dataset_dict_dir(self.path) or not is_dataset_dir(self.path):
            raise DataError(f"{str(self.path)!r} is not a speculators data directory (a `datasets` save_to_disk "
                            f"directory with input_ids / loss_mask columns and hidden_states/hs_<i>.safetensors)")
        self.hidden_dir = Path(hidden_states_dir) if hidden_states_dir else self.path / "hidden_states"
        if not self.hidden_dir.is_dir():
            raise DataError(f"speculators features {str(self.path)!r}: no hidden-state directory "
                            f"{str(self.hidden_dir)!r} (pass --hidden-states DIR when the files live elsewhere)")
        self.data_files = dataset_dir_files(self.path)

    def rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        from .columnar import rows

        for n, row in rows(self.path):
            if "input_ids" not in row or "loss_mask" not in row:
                raise DataError(f"{self.path}: row {n} has no input_ids / loss_mask (columns: {', '.join(row)})")
            yield n - 1, row

    def read(self, row: int, record: dict[str, Any], num_slots: int, hidden_size: int, vocab_size: int
             ) -> EngineSample:
        """Row ``row``'s sample, or :class:`DataError` naming the file and what is wrong with it."""
        import numpy as np
        import torch
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        file = self.hidden_dir / f"hs_{row}.safetensors"
        where = f"{file} (row {row + 1} of {self.path})"
        if not file.is_file():
            raise DataError(f"{where}: missing — the engine did not write this sample")
        try:
            tensors = load_file(str(file))
        except (SafetensorError, OSError) as exc:
            raise DataError(f"{where}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None
        if "token_ids" not in tensors or "hidden_states" not in tensors:
            raise DataError(f"{where}: needs tensors token_ids and hidden_states, has {sorted(tensors)}")
        ids = np.asarray(record["input_ids"], dtype=np.int64)
        mask = np.asarray(record["loss_mask"], dtype=np.uint8)
        tokens, hidden = tensors["token_ids"], tensors["hidden_states"]
        if len(mask) != len(ids):
            raise DataError(f"{where}: {len(ids)} input_ids but {len(mask)} loss_mask entries")
        if tokens.numel() != len(ids) or not np.array_equal(tokens.to(torch.int64).numpy(), ids):
            raise DataError(f"{where}: token_ids differ from the dataset's input_ids (the engine saw another "
                            f"sequence; speculators skips such rows)")
        want = (len(ids), num_slots, hidden_size)
        if tuple(hidden.shape) != want:
            raise DataError(f"{where}: hidden_states has shape {tuple(hidden.shape)}, expected {want} "
                            f"(tokens, the {num_slots} --engine-layer-ids, the target's hidden size)")
        if len(ids) and int(ids.max()) >= vocab_size:
            raise DataError(f"{where}: token id {int(ids.max())} is outside the target vocabulary ({vocab_size})")
        if not bool(torch.isfinite(hidden).all()):
            raise DataError(f"{where}: hidden_states hold non-finite values")
        return EngineSample(row=row, input_ids=ids, loss_mask=mask, hidden=hidden)
