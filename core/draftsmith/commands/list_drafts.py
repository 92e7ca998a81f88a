"""`draftsmith list-drafts`: what draft models the installed plugins provide."""

from __future__ import annotations

import json

HELP = "list installed draft models (method x architecture), their plugins and status"


def add_arguments(parser) -> None:
    parser.add_argument("--method", help="only this method (aliases such as eagle2 show their drafts)")
    parser.add_argument("--architecture", help="only this HF architecture string, e.g. Qwen3ForCausalLM")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args) -> int:
    from draftsmith import get_plugin_manager, list_drafts

    manager = get_plugin_manager()
    rows = list_drafts(args.method)
    if args.architecture:
        rows = [r for r in rows if r["architecture"] == args.architecture]
    broken = [{"plugin": b.name, "distribution": b.distribution, "version": b.version, "error": b.error}
              for b in manager.broken]
    if args.json:
        print(json.dumps({"drafts": rows, "broken_plugins": broken}, indent=2))
        return 0
    from ._table import render_table

    if rows:
        print(render_table(
            ["METHOD", "ARCHITECTURE", "DRAFT CLASS", "PLUGIN", "VERSION", "STATUS"],
            [[r["method"], r["architecture"], r["draft_class"], r["plugin"], r["version"], r["status"]]
             for r in rows]))
    else:
        what = " matching the filters" if (args.method or args.architecture) else ""
        print(f"no drafts installed{what} (pip install draftsmith-eagle draftsmith-dflash draftsmith-dspark)")
    aliases = {name: m.drafts_from for name, m in manager.registry.methods().items() if m.drafts_from}
    if aliases and not args.architecture and (args.method is None or args.method in aliases):
        print("\naliases: " + ", ".join(f"{a} -> {b} drafts" for a, b in sorted(aliases.items())))
    for b in broken:
        print(f"\nbroken plugin {b['plugin']} ({b['distribution'] or 'unknown distribution'} "
              f"{b['version'] or ''}): {b['error']}".replace("  ", " "))
    return 0
