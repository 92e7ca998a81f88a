"""`draftsmith export`: write a trained draft in a serving engine's checkpoint format."""

from __future__ import annotations

HELP = "export a saved draft for a serving engine (formats come from the method's plugin)"
DESCRIPTION = """Export a saved draft directory for a serving engine.

The formats a method supports are registered by plugins (`draftsmith plugins --json`, field formats), e.g.
eagle3: native, vllm, sglang, speculators; dflash: native, zlab, vllm, sglang, speculators; dspark: native,
vllm, sglang, speculators. The draft may itself be in any readable layout (a public checkpoint, an export)."""


def add_arguments(parser) -> None:
    parser.add_argument("--draft", required=True, help="saved draft directory (config.json + model.safetensors)")
    parser.add_argument("--format", required=True, dest="fmt", help="export format, e.g. native, vllm, sglang")
    parser.add_argument("--out", required=True, help="output directory (created; must not exist or be empty)")
    parser.add_argument("--target", help="the target (verifier) model directory or hub id, for formats that name "
                                         "it (speculators); default: the one the draft was trained on")


def run(args) -> int:
    from pathlib import Path

    from draftsmith import get_registry
    from draftsmith.checkpoint import load_draft, read_draft_metadata
    from draftsmith.errors import ConfigError

    block = read_draft_metadata(args.draft)
    fmt = get_registry().get_format(block["method"], args.fmt)
    if fmt.refusal:
        raise ConfigError(fmt.refusal)
    if fmt.writer is None:
        raise ConfigError(f"the {args.fmt!r} format of {block['method']} can be read but not written")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"output directory {str(out)!r} is not empty")
    draft = load_draft(args.draft)
    options = {"target": args.target} if args.target else {}
    fmt.load_writer()(draft, out, **options)
    problems = _check(out, args.fmt)
    if problems:
        raise ConfigError(f"the {args.fmt!r} export in {out} has problems: " + "; ".join(problems))
    print(f"exported {block['method']} draft to {out} ({args.fmt})")
    return 0


def _check(out, fmt: str) -> list[str]:
    """check-export's problems for layouts it knows, as the format's engine reads them (a third-party format it
    does not know is not judged)."""
    from draftsmith.conventions import read_config_json
    from draftsmith.errors import DraftsmithError
    from draftsmith.export_check import FORMAT_ENGINE, check_export, detect_layout

    if detect_layout(read_config_json(out, what="export directory", error=DraftsmithError)) is None:
        return []
    return check_export(out, engine=FORMAT_ENGINE.get(fmt))[1]
