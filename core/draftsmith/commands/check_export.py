"""`draftsmith check-export`: check an exported draft directory against what its engine reads."""

from __future__ import annotations

HELP = "check an exported draft: keys the engine reads, capturable layer ids, vocab maps, tensors"
DESCRIPTION = """Check an exported draft directory against the loader of the engine that will read it: the keys it
reads are present and mean what draftsmith means, the layer ids are capturable on the target, the vocabulary
maps are consistent, the DFlash mask token is valid, and no tensor is non-finite or left constant (with
--target: the token embedding is the target's). One line per problem; exit 1 when there is any."""


def add_arguments(parser) -> None:
    parser.add_argument("dir", help="exported draft directory (config.json + model.safetensors)")
    parser.add_argument("--engine", choices=["vllm", "sglang", "specforge", "speculators", "zlab"],
                        help="the engine that will read it (default: any that reads the detected layout)")
    parser.add_argument("--target", help="the target model directory (layer-id capturability, mask token, "
                                         "embedding)")


def run(args) -> int:
    import sys

    from draftsmith.export_check import check_export

    layout, problems = check_export(args.dir, engine=args.engine, target=args.target)
    for problem in problems:
        print(f"{args.dir}: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"{args.dir}: {layout} layout OK" + (f" for {args.engine}" if args.engine else ""))
    return 0
