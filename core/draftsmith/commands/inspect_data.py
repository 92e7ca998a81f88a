"""`draftsmith inspect-data`: audit the loss mask — a sample with supervised spans highlighted, and statistics."""

from __future__ import annotations

from ._args import json_object

HELP = "show how training data is tokenised and which tokens are supervised (a loss-mask audit)"
DESCRIPTION = """Render samples of a training file with the target's chat template and highlight the supervised
(assistant) tokens, then print mask statistics: dropped samples (all-zero masks), all-ones masks on chats,
truncation, supervised fraction.

  draftsmith inspect-data --target ./my-model --data chats.jsonl [--index 3] [--num 2]
"""


def add_arguments(parser) -> None:
    parser.add_argument("--target", required=True, help="local HF model directory (its tokenizer and config)")
    parser.add_argument("--data", required=True, action="append", help="data file (JSONL, JSON array, parquet, arrow) or directory (repeatable)")
    parser.add_argument("--chat-template", help="Jinja chat template file overriding the tokenizer's (or a "
                                                 "built-in: chatml, qwen3-thinking)")
    parser.add_argument("--chat-template-kwargs", type=json_object, default={}, metavar="JSON",
                        help='keywords the chat template reads, e.g. \'{"enable_thinking": false}\'')
    parser.add_argument("--seq-len", type=int, default=2048, help="truncation length (default 2048)")
    parser.add_argument("--index", type=int, default=0, help="first sample to show (default 0)")
    parser.add_argument("--num", type=int, default=1, help="how many samples to show (default 1; 0 = statistics only)")
    parser.add_argument("--on-bad-data", choices=("error", "skip"), default="error",
                        help="malformed lines: stop with file:line (error) or skip and count (skip)")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="highlight supervised tokens in colour (default: when stdout is a terminal)")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the tokenizer's own code")
    parser.add_argument("--json", action="store_true", help="statistics as JSON (no sample text)")


def run(args) -> int:
    import json
    import sys
    from pathlib import Path

    from draftsmith.data.chat import resolve_template
    from draftsmith.data.inspect import format_statistics, render, statistics
    from draftsmith.data.samples import load_samples
    from draftsmith.errors import ConfigError
    from draftsmith.train.setup import load_target_tokenizer

    target = Path(args.target)
    if not target.is_dir():
        raise ConfigError(f"target path {args.target!r} does not exist" if not target.exists()
                          else f"target path {args.target!r} is not a directory")
    tokenizer = load_target_tokenizer(target, trust_remote_code=args.trust_remote_code)
    template = resolve_template(tokenizer, args.chat_template)
    vocab = None
    config_file = target / "config.json"
    if config_file.is_file():
        cfg = json.loads(config_file.read_text())
        vocab = (cfg.get("text_config") or {}).get("vocab_size") or cfg.get("vocab_size")
    samples, report = load_samples(args.data, tokenizer, seq_len=args.seq_len, on_bad_data=args.on_bad_data,
                                   vocab_size=vocab, chat_template=template,
                                   chat_template_kwargs=args.chat_template_kwargs)
    stats = statistics(samples, report)
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    for i in range(args.index, min(args.index + args.num, len(samples))):
        s = samples[i]
        print(f"--- sample {i} ({s.source}): {len(s)} tokens, {int(s.loss_mask.sum())} supervised ---")
        print(render(s, tokenizer, color=color))
    if args.num and args.index >= len(samples):
        raise ConfigError(f"--index {args.index} is past the last usable sample ({len(samples) - 1})")
    print("--- statistics ---")
    print(format_statistics(stats))
    return 0
