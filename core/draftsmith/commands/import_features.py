"""`draftsmith import-features`: features a serving engine captured, as a draftsmith offline cache."""

from __future__ import annotations

HELP = "turn hidden states a serving engine captured (speculators' offline layout) into an offline feature cache"
DESCRIPTION = """Import engine-captured target features for offline training.

  draftsmith import-features CONFIG.yaml --speculators DATA_DIR --engine-layer-ids 3,5,6 --out features/
  draftsmith train CONFIG.yaml --offline-features features/

DATA_DIR is what speculators trains from: a `datasets` save_to_disk directory (input_ids, loss_mask) and
DATA_DIR/hidden_states/hs_<i>.safetensors written by vLLM's extract_hidden_states (token_ids, hidden_states of
shape [tokens, layers, hidden]). --engine-layer-ids are the layer ids given to vLLM at extraction, in file
order, in vLLM's convention (e = the input of decoder layer e; the target's layer count = its last layer's
output, which speculators needs as the last one). draftsmith layer id = engine id - 1; the final hidden state
is the target's final norm applied to the last layer's output. The config is the training config: the run's
method and draft options decide which layers are needed; only the target's heads and final norm are loaded.
"""


def _layer_ids(text: str) -> list[int]:
    import argparse

    try:
        return [int(x) for x in text.replace(" ", "").strip("[]").split(",") if x != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_arguments(parser) -> None:
    from draftsmith.commands.train import add_common_arguments

    add_common_arguments(parser)
    parser.add_argument("--speculators", metavar="DATA_DIR", required=True,
                        help="speculators offline data directory (datasets save_to_disk + hidden_states/)")
    parser.add_argument("--hidden-states", metavar="DIR",
                        help="directory of the hs_<i>.safetensors files (default DATA_DIR/hidden_states)")
    parser.add_argument("--engine-layer-ids", type=_layer_ids, required=True, metavar="E1,E2,...",
                        help="layer ids the engine captured, in file order, vLLM convention")
    parser.add_argument("--out", help="cache directory (default: train.offline_features of the config)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                        help="storage dtype of the features (default bfloat16)")
    parser.add_argument("--shard-mb", type=int, default=256, help="approximate shard size in MiB (default 256)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing cache in --out")


def run(args) -> int:
    import sys

    from draftsmith.commands.train import config_from_args, preflight
    from draftsmith.errors import ConfigError

    config = config_from_args(args)
    preflight(config, reading_features=False, need_data=False)
    out = args.out or config.train.offline_features
    if not out:
        raise ConfigError("no output directory: pass --out DIR (or set train.offline_features)")
    from draftsmith.train.import_features import import_features

    import_features(config, args.speculators, args.engine_layer_ids, out, hidden_states_dir=args.hidden_states,
                    dtype=args.dtype, shard_mb=args.shard_mb, overwrite=args.overwrite,
                    log=lambda s: print(s, file=sys.stderr, flush=True))
    return 0
