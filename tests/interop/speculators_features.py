"""Run inside the speculators 0.9.0 environment: speculators' own offline-data pipeline on both ends of
``draftsmith import-features``.

    python speculators_features.py preprocess TARGET_DIR TOKENS.jsonl DATA_DIR SEQ_LEN
    python speculators_features.py read DATA_DIR MAX_LEN OUT.safetensors

``preprocess`` runs speculators' ``load_and_preprocess_dataset`` on pre-tokenised rows (``input_ids`` +
``loss_mask``, the speculator-format rows it passes through, shuffled with its seed) and ``save_to_disk``s the
result — the directory its data generation writes before vLLM adds ``hidden_states/hs_<i>.safetensors``.
``read`` loads DATA_DIR with speculators' training dataset (``ArrowDataset``, ``on_missing="raise"``: every
sample must come from the files) and writes what its trainer would get per row ``i``: ``input_ids.<i>``,
``loss_mask.<i>``, ``aux.<i>`` (the aux slots flattened, T × k·H) and ``last.<i>`` (the verifier's last hidden
state, before its norm).
"""

import sys
import warnings

import torch
from safetensors.torch import save_file


def preprocess(target: str, tokens: str, out: str, seq_len: str) -> None:
    from speculators.data_generation.preprocessing import load_and_preprocess_dataset

    dataset, _ = load_and_preprocess_dataset(target, [tokens], seq_length=int(seq_len), build_dataset_num_proc=1)
    dataset.save_to_disk(out)


def read(data_dir: str, max_len: str, out: str) -> None:
    from speculators.train.data import ArrowDataset
    from speculators.train.recovery import SampleUnavailable

    dataset = ArrowDataset(int(max_len), data_dir, on_missing="raise", hidden_states_dtype=torch.float32)
    tensors = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a row speculators would skip (token mismatch) fails here
        for i in range(len(dataset)):
            item = dataset[i]
            assert not isinstance(item, SampleUnavailable), f"row {i}: {item}"
            tensors[f"input_ids.{i}"] = item["input_ids"].contiguous()
            tensors[f"loss_mask.{i}"] = item["loss_mask"].contiguous()
            tensors[f"aux.{i}"] = item["hidden_states"].contiguous()
            tensors[f"last.{i}"] = item["verifier_last_hidden_states"].contiguous()
    save_file(tensors, out)


if __name__ == "__main__":
    {"preprocess": preprocess, "read": read}[sys.argv[1]](*sys.argv[2:])
