"""`draftsmith eval`: what a draft is worth — τ, acceptance per position, and the speedup over the target.

Loads the target and the draft (its method comes from the draft's ``draftsmith`` block), builds the method's
drafter through the registry, then decodes every prompt speculatively and plainly in the same run.
"""

from __future__ import annotations

import json
import sys

HELP = "evaluate a draft: acceptance length, acceptance per position, speedup (lossless speculative decoding)"
DESCRIPTION = HELP + """

Prompts: JSONL, one object per line: {"messages": [...]} (OpenAI chat; the target's chat template is applied,
trailing assistant turns are dropped) or {"text": "..."} (raw text).

Greedy decoding (the default) must reproduce the target's own output exactly; --check-lossless compares every
prompt's output with plain greedy decoding and exits non-zero at the first difference. τ counts the target's
bonus token (1 <= τ <= drafts + 1 per round)."""


def add_arguments(parser) -> None:
    parser.add_argument("--target", required=True, help="local HF target directory (safetensors)")
    parser.add_argument("--draft", required=True, help="saved draft directory (config.json + model.safetensors)")
    parser.add_argument("--prompts", required=True, help="prompt JSONL ({'messages': [...]} or {'text': ...})")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate per prompt (128)")
    parser.add_argument("--max-prompts", type=int, default=None, help="evaluate only the first N prompts")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    parser.add_argument("--top-k", type=int, default=0, help="top-k sampling (0 = off)")
    parser.add_argument("--num-draft-tokens", "-k", type=int, default=None,
                        help="drafts per round (tree drafters: node budget); default: the drafter's own")
    parser.add_argument("--tree", default=None, metavar="KEY=VALUE[,KEY=VALUE...]",
                        help="options of a tree drafter, e.g. EAGLE-2: --method eagle2 --tree top_k=4,max_depth=6 "
                             "(the node budget is --num-draft-tokens); merged into the drafter options")
    parser.add_argument("--method", default=None,
                        help="decode with another method that uses the same drafts (e.g. eagle2 for an "
                             "eagle1 draft); default: the draft's own method")
    parser.add_argument("--drafter", default=None, metavar="MODULE:CLASS",
                        help="drafter class overriding the method's own (e.g. a tree drafter for a method that "
                             "registers a chain drafter)")
    parser.add_argument("--drafter-option", action="append", default=[], metavar="KEY=VALUE",
                        help="option for the drafter (JSON values allowed), repeatable")
    parser.add_argument("--check-lossless", action="store_true",
                        help="also decode plainly (greedy) and fail on any difference")
    parser.add_argument("--no-baseline", action="store_true", help="skip timing plain target decoding")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", default="float32", help="target/draft dtype: float32 (default), bfloat16, "
                        "float16 (greedy ties may then differ between batched and one-token forwards)")
    parser.add_argument("--chat-template", default=None, help="Jinja chat template file overriding the target's")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def parse_key_values(items: list[str], flag: str) -> dict:
    from draftsmith.errors import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def drafter_options(args) -> dict:
    options = parse_key_values(args.drafter_option, "--drafter-option")
    if args.tree is not None:
        options.update(parse_key_values([p for p in args.tree.split(",") if p.strip()], "--tree"))
    return options


def build_drafter(args, method, draft, heads, options):
    """The drafter: the method's own (or --drafter), built as ``cls(draft, heads, **options)``."""
    from draftsmith.errors import ConfigError, DraftsmithError
    from draftsmith.spec import import_object

    hint = (" (--tree needs a tree drafter: a method such as eagle2, or --drafter MODULE:CLASS)"
            if args.tree is not None else "")
    if args.drafter:
        cls = import_object(args.drafter)  # a user-chosen class: its own signature decides
    else:
        cls = method.load_drafter()
        try:
            options = method.drafter_kwargs(options)  # declared defaults + the user's options, validated
        except ConfigError as exc:
            raise ConfigError(f"{exc}{hint}") from exc
    try:
        return cls(draft, heads, **options)
    except (TypeError, ValueError, DraftsmithError) as exc:
        raise ConfigError(f"cannot build drafter {cls.__name__} with options {options}: {exc}{hint}") from exc


def resolve_method(args, block: dict):
    """The MethodSpec to decode with: the draft's own, or --method if it uses the same drafts."""
    from draftsmith import get_method, get_registry
    from draftsmith.errors import ConfigError

    saved = block["method"]
    name = args.method or saved
    registry = get_registry()
    if registry.draft_method(name) != registry.draft_method(saved):
        raise ConfigError(f"--method {name} does not use {saved} drafts (it uses "
                          f"{registry.draft_method(name)} drafts)")
    return get_method(name)


def check_draft_matches_target(block: dict, target_config, draft_path: str) -> None:
    from draftsmith.conventions import text_config
    from draftsmith.errors import ConfigError

    want = block.get("target_num_hidden_layers")
    have = text_config(target_config).num_hidden_layers
    if want is not None and int(want) != int(have):
        raise ConfigError(f"draft {draft_path!r} was built for a {want}-layer target; this target has {have} "
                          f"layers")


def run(args) -> int:
    import torch

    from draftsmith.checkpoint import load_draft, read_draft_metadata
    from draftsmith.decode.evaluate import run_eval
    from draftsmith.decode.prompts import encode_prompt, read_prompts
    from draftsmith.decode.sampling import SamplingConfig
    from draftsmith.errors import ConfigError
    from draftsmith.target import check_target_dir, load_target, load_tokenizer, target_heads

    sampling = SamplingConfig(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.threads:
        torch.set_num_threads(args.threads)
    check_target_dir(args.target)
    block = read_draft_metadata(args.draft)
    method = resolve_method(args, block)
    options = drafter_options(args)
    prompts = read_prompts(args.prompts, args.max_prompts)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(args.target, trust_remote_code=args.trust_remote_code,
                               chat_template=args.chat_template)
    encoded = [encode_prompt(p, tokenizer) for p in prompts]
    target = load_target(args.target, dtype=args.dtype, device=device, trust_remote_code=args.trust_remote_code)
    check_draft_matches_target(block, target.config, args.draft)
    draft = load_draft(args.draft, dtype=target.dtype, device=device)
    heads = target_heads(target)
    drafter = build_drafter(args, method, draft, heads, options)
    eos = set(heads.eos_token_ids)
    if tokenizer.eos_token_id is not None:
        eos.add(int(tokenizer.eos_token_id))

    from tqdm import tqdm

    report = run_eval(target, drafter, encoded, max_new_tokens=args.max_new_tokens, sampling=sampling,
                      num_draft_tokens=args.num_draft_tokens, eos_token_ids=sorted(eos),
                      check_lossless=args.check_lossless, baseline=not args.no_baseline, seed=args.seed,
                      progress=lambda items: tqdm(items, desc="eval", unit="prompt", file=sys.stderr,
                                                  disable=None))
    info = {"method": method.name, "drafter": f"{type(drafter).__module__}:{type(drafter).__qualname__}",
            "draft": args.draft, "target": args.target, "prompts": len(prompts),
            "device": str(device), "dtype": args.dtype, "max_new_tokens": args.max_new_tokens,
            "drafter_options": options, **report.to_dict()}
    if report.mismatch is not None:
        m = report.mismatch
        info["lossless"]["first_mismatch"].update(
            prompt_line=prompts[m.prompt_index].line,
            speculative_text=tokenizer.decode(m.speculative), target_text=tokenizer.decode(m.target))
    if args.json:
        from draftsmith.tracking.jsonl_tracker import json_plain

        # strict JSON: a metric without data (speedup with --no-baseline, an unreached position) is "nan"
        print(json.dumps(json_plain(info), indent=2, default=str, allow_nan=False))
    else:
        print_report(info)
    if report.mismatch is not None:
        m = report.mismatch
        print(f"draftsmith: error: lossless check FAILED: prompt {m.prompt_index + 1} (line "
              f"{prompts[m.prompt_index].line} of {args.prompts}) differs at generated token {m.position}: "
              f"speculative {m.speculative[:1]} {tokenizer.decode(m.speculative[:1])!r} vs target "
              f"{m.target[:1]} {tokenizer.decode(m.target[:1])!r}", file=sys.stderr)
        return 1
    return 0


def _fmt(x, spec: str = ".2f", unit: str = "") -> str:
    return "n/a" if x is None or x != x else f"{x:{spec}}{unit}"


def print_report(info: dict) -> None:
    s = info["sampling"]
    mode = "greedy" if s["temperature"] == 0 else f"T = {s['temperature']:g}, top-p {s['top_p']:g}, top-k " \
                                                  f"{s['top_k']}"
    print(f"draftsmith eval — method {info['method']} ({info['drafter'].rsplit(':', 1)[-1]}), "
          f"{info['prompts']} prompts, {mode}, "
          f"{info['num_draft_tokens']} drafts/round, max {info['max_new_tokens']} new tokens, "
          f"{info['device']} {info['dtype']}")
    rows = [
        ("mean acceptance length τ", f"{_fmt(info['tau'])}  (tokens per round incl. the bonus token; "
                                     f"{info['rounds']} rounds)"),
        ("acceptance per position", "  ".join(f"{k + 1}:{a:.2f}" for k, a in
                                              enumerate(info["conditional_acceptance"])) or "n/a"),
        ("drafted / accepted tokens", f"{info['drafted_tokens']} / {info['accepted_tokens']}  "
                                      f"({_fmt(100 * info['acceptance_rate'], '.1f', ' %')})"),
        ("speculative decoding", f"{_fmt(info['tokens_per_second'], '.1f', ' tok/s')}  "
                                 f"({info['generated_tokens']} tokens; per round: draft "
                                 f"{_fmt(1e3 * info['draft_time_per_round_s'], '.2f', ' ms')}, verify "
                                 f"{_fmt(1e3 * info['verify_time_per_round_s'], '.2f', ' ms')})"),
        ("target decoding", _fmt(info["target_tokens_per_second"], ".1f", " tok/s")),
        ("speedup", f"{_fmt(info['speedup'], '.2f', '×')}  (bound τ·t_target/(t_verify+t_draft) = "
                    f"{_fmt(info['speedup_bound'], '.2f', '×')})"),
    ]
    lossless = info["lossless"]
    if lossless["checked"]:
        rows.append(("lossless check", "passed" if lossless["ok"] else "FAILED") if lossless["ok"] is not None
                    else ("lossless check", "n/a"))
        if lossless["ok"]:
            rows[-1] = ("lossless check", f"passed ({lossless['compared_tokens']} tokens identical to plain "
                                          f"greedy decoding)")
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
