"""`draftsmith plugins`: installed plugins, their versions, hooks, methods, formats, trackers and load errors."""

from __future__ import annotations

import json

HELP = "list installed plugins, their hooks, methods and load errors"


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args) -> int:
    from draftsmith import get_plugin_manager

    manager = get_plugin_manager()
    methods = manager.registry.methods()
    plugins = [
        {"plugin": p.name, "distribution": p.distribution, "version": p.version, "module": p.module,
         "hooks": list(p.hooks), "status": "ok",
         "methods": sorted(n for n, m in methods.items() if m.plugin == p.name)}
        for p in manager.loaded
    ]
    plugins += [{"plugin": b.name, "distribution": b.distribution, "version": b.version, "status": "broken",
                 "error": b.error} for b in manager.broken]
    plugins += [{"plugin": name, "status": "disabled"} for name in manager.skipped]
    if args.json:
        described = []
        for name, m in methods.items():
            formats = manager.registry.formats(name)
            described.append({**m.describe(),
                              "export_formats": sorted(n for n, f in formats.items() if f.writer is not None),
                              "refused_formats": sorted(n for n, f in formats.items() if f.refusal),
                              "read_formats": sorted(n for n, f in formats.items() if f.reader is not None),
                              "formats": [f.describe() for _n, f in sorted(formats.items())]})
        trackers = [t.describe() for t in manager.registry.trackers().values()]
        print(json.dumps({"plugins": plugins, "methods": described, "trackers": trackers}, indent=2))
        return 0
    from ._table import render_table

    print(render_table(["PLUGIN", "DISTRIBUTION", "VERSION", "STATUS", "METHODS / ERROR"],
                       [[p["plugin"], p.get("distribution"), p.get("version"), p["status"],
                         ", ".join(p.get("methods", [])) or p.get("error", "")] for p in plugins]))
    for p in plugins:
        if p.get("hooks"):
            print(f"\n{p['plugin']} hooks: {', '.join(p['hooks'])}")
    print("\nformats (w = `draftsmith export --format`, r = read by load_draft / eval / train --init-from):")
    for name in sorted(methods):
        formats = manager.registry.formats(name)
        cells = [f"{n} ({'refused' if f.refusal else ''}{'w' if f.writer is not None else ''}"
                 f"{'r' if f.reader is not None else ''})" for n, f in sorted(formats.items())]
        print(f"  {name}: {', '.join(cells) or 'none'}")
    print("\ntrackers (train.trackers; options in tracker_options.<name>):")
    for name, t in manager.registry.trackers().items():
        print(f"  {name} ({t.distribution or t.plugin}): {t.summary}")
    return 0
