"""`draftsmith resolve`: which draft spec serves a target, and the draft config it builds."""

from __future__ import annotations

import json

HELP = "show which draft spec serves a method for an architecture or a local target, and its draft config"


def add_arguments(parser) -> None:
    parser.add_argument("--method", required=True, help="draft method, e.g. eagle3, dflash, dspark")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--architecture", action="append",
                       help="HF architecture string (repeat to give an ordered list)")
    group.add_argument("--target", help="local HF model directory (reads its config.json)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="draft option passed to build_config (JSON values allowed), repeatable")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def read_target_architectures(target: str) -> list[str]:
    """The ``architectures`` list of a local target's config.json, with one-line errors."""
    from draftsmith.conventions import architectures_of, read_config_json

    return architectures_of(read_config_json(target, what="target path"), f"{target}/config.json")


def parse_options(items: list[str]) -> dict:
    from draftsmith.errors import ConfigError

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option expects KEY=VALUE, got {item!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def run(args) -> int:
    from draftsmith import get_registry

    archs = read_target_architectures(args.target) if args.target else args.architecture
    registry = get_registry()
    spec = registry.resolve(args.method, archs)
    info = {
        "method": args.method,
        "draft_method": registry.draft_method(args.method),
        "architectures": archs,
        "draft_class": spec.draft_class_path,
        "priority": spec.priority,
        "plugin": getattr(spec, "plugin", None),
        "distribution": getattr(spec, "distribution", None),
        "version": getattr(spec, "version", None),
    }
    if args.target:
        from transformers import AutoConfig

        from draftsmith import get_method
        from draftsmith.conventions import num_target_layers

        target_config = AutoConfig.from_pretrained(args.target, trust_remote_code=False)
        options = parse_options(args.option)
        method = get_method(args.method) if args.method in registry.methods() else None
        if method is not None:
            options = method.route_options(draft=options)[0]
            # the method's layer policy (MethodSpec.layer_policy): what the draft reads when no ids are given
            info["default_target_layer_ids"] = method.default_layer_ids(num_target_layers(target_config),
                                                                        **options)
        draft_config = spec.build_config(target_config, **options)
        info["draft_config"] = draft_config.to_dict() if hasattr(draft_config, "to_dict") else dict(draft_config)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for key in ("method", "draft_method", "architectures", "draft_class", "priority", "plugin", "distribution",
                "version"):
        print(f"{key:>13}: {info[key]}")
    if "default_target_layer_ids" in info:
        print(f"{'layer policy':>13}: {info['default_target_layer_ids']} (output-of-layer ids)")
    if "draft_config" in info:
        print("draft config:")
        print(json.dumps(info["draft_config"], indent=2, default=str))
    else:
        print("(pass --target PATH to build and show the draft config for a real target)")
    return 0
