"""`draftsmith prepare-features`: capture the target features a run needs into an offline cache."""

from __future__ import annotations

HELP = "run the target once over the data and store the features a method needs (safetensors shards + manifest)"
DESCRIPTION = """Capture target features for offline training.

  draftsmith prepare-features CONFIG.yaml --out features/ [--dtype bfloat16]
  draftsmith train CONFIG.yaml --offline-features features/

The config is the training config (method, target, data, draft options decide which layers are captured). The
cache records the target and tokenizer hashes, layer ids, seq_len, data and chat-template hashes and the
draftsmith version in manifest.json; training refuses a cache that does not match, naming the field.
"""


def add_arguments(parser) -> None:
    from draftsmith.commands.train import add_common_arguments

    add_common_arguments(parser)
    parser.add_argument("--out", help="cache directory (default: train.offline_features of the config)")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"),
                        help="storage dtype of the features (default bfloat16: half the disk of float32)")
    parser.add_argument("--batch-tokens", type=int, default=16384,
                        help="padded tokens per target forward (default 16384)")
    parser.add_argument("--shard-mb", type=int, default=256, help="approximate shard size in MiB (default 256)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing cache in --out")


def run(args) -> int:
    import sys

    from draftsmith.commands.train import config_from_args, preflight
    from draftsmith.errors import ConfigError

    config = config_from_args(args)
    preflight(config, reading_features=False)  # train.offline_features is where we write
    out = args.out or config.train.offline_features
    if not out:
        raise ConfigError("no output directory: pass --out DIR (or set train.offline_features)")
    from draftsmith.train.prepare import prepare_features

    prepare_features(config, out, dtype=args.dtype, batch_tokens=args.batch_tokens, shard_mb=args.shard_mb,
                     overwrite=args.overwrite, log=lambda s: print(s, file=sys.stderr, flush=True))
    return 0
