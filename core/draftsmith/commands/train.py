"""`draftsmith train`: train a draft for a target from a YAML config, flags and --set overrides."""

from __future__ import annotations

HELP = "train a draft model for a target (online, or from a prepare-features cache); runs under torchrun too"
DESCRIPTION = """Train a speculative-decoding draft for a local Hugging Face target.

  draftsmith train CONFIG.yaml [--set train.lr=2e-4 ...]
  draftsmith train --method eagle3 --target ./my-model --data chats.jsonl --output-dir runs/e3
  torchrun --nproc-per-node 8 -m draftsmith train CONFIG.yaml

Precedence: config file < flags < --set. The trained draft is saved to <output-dir>/final (load it with
draftsmith.load_draft); checkpoints go to <output-dir>/checkpoints, metrics to <output-dir>/metrics.jsonl and the trackers in
train.trackers (tensorboard, wandb, mlflow, ...); `draftsmith report <output-dir>` plots them.
"""

# flag dest -> config key (the flags are shortcuts for the most common keys)
FLAG_KEYS = {
    "method": "method",
    "target": "target.path",
    "data": "data.train",
    "eval_data": "data.eval",
    "chat_template": "data.chat_template",
    "on_bad_data": "data.on_bad_data",
    "output_dir": "train.output_dir",
    "max_steps": "train.max_steps",
    "seq_len": "data.seq_len",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "offline_features": "train.offline_features",
    "resume": "train.resume",
    "init_from": "train.init_from",
}


def add_common_arguments(parser) -> None:
    """Config file, --set and the flags shared by train and prepare-features."""
    parser.add_argument("config", nargs="?", help="YAML config file (optional when flags say everything)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                        help="override a config key, e.g. --set train.lr=2e-4 (repeatable; YAML values)")
    parser.add_argument("--method", help="draft method: eagle1, eagle2, eagle3, dflash, dspark, ... (method)")
    parser.add_argument("--target", help="local HF model directory of the target (target.path)")
    parser.add_argument("--data", action="append",
                        help="training data: JSONL, JSON array, parquet or arrow file, a datasets save_to_disk dir, "
                             "or a directory of them (data.train; repeatable)")
    parser.add_argument("--eval-data", action="append", help="held-out data, same formats (data.eval; repeatable)")
    parser.add_argument("--chat-template", help="Jinja chat template file overriding the tokenizer's "
                                                "(data.chat_template)")
    parser.add_argument("--seq-len", type=int, help="truncate samples to N tokens (data.seq_len)")
    parser.add_argument("--on-bad-data", choices=("error", "skip"),
                        help="malformed data lines: stop with file:line, or skip and count them (data.on_bad_data)")


def add_arguments(parser) -> None:
    from draftsmith.train.config import help_text

    add_common_arguments(parser)
    parser.add_argument("--output-dir", help="run directory (train.output_dir)")
    parser.add_argument("--max-steps", type=int, help="optimizer steps (train.max_steps)")
    parser.add_argument("--batch-size", type=int, help="micro-batch rows per process (train.batch_size)")
    parser.add_argument("--lr", type=float, help="peak learning rate (train.lr)")
    parser.add_argument("--offline-features", help="train from this prepare-features cache (train.offline_features)")
    parser.add_argument("--init-from", metavar="DRAFT_DIR",
                        help="fine-tune this draft (ours, an engine export or a public checkpoint) instead of a fresh "
                             "one (train.init_from)")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="CHECKPOINT",
                        help="continue from the latest valid checkpoint in the output dir, or from CHECKPOINT")
    parser.epilog = help_text()


def config_from_args(args):
    """The validated RunConfig: file < flags < --set."""
    from draftsmith.train.config import load_config

    flags = {}
    for dest, key in FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is not None:
            flags[key] = value
    return load_config(args.config, args.overrides, base=flags)


def preflight(config, *, reading_features: bool = True, need_data: bool = True) -> None:
    """Torch-free checks (paths, method, draft spec for the target's architectures), so the commonest mistakes
    fail in a fraction of a second instead of after importing torch and transformers."""
    import draftsmith
    from draftsmith.commands.resolve import read_target_architectures
    from draftsmith.train.config import check_required

    from draftsmith.tracking import check_tracker_config

    check_required(config, reading_features=reading_features, need_data=need_data)
    check_tracker_config(config)
    draftsmith.get_method(config.method)
    draftsmith.resolve_draft_spec(config.method, read_target_architectures(config.target.path))


def run(args) -> int:
    config = config_from_args(args)
    preflight(config)
    from draftsmith.train.trainer import train

    result = train(config)
    if result.final_dir is not None and _is_main():
        print(f"trained {result.step} steps; final draft: {result.final_dir}")
    return 0


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"
