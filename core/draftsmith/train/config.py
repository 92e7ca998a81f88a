"""The `draftsmith train` configuration: a schema of dataclasses with defaults and help strings.

The schema is the single source of truth: YAML files and ``--set a.b=c`` overrides are validated against it
(unknown keys are an error with a did-you-mean), and ``draftsmith train --help`` lists every key with its
type and default by walking it (:func:`describe_keys`). Three sections are free-form dictionaries checked against
the option tables the method declares (``MethodSpec.route_options``): ``draft`` (options of the draft's
``build_draft_config``) and ``method_options`` (options of the method's objective); ``tracker_options`` is checked
against the options each selected tracker declares (:mod:`draftsmith.tracking`).

Torch-free: imported by ``draftsmith train --help``. Longer than most modules (~380 lines): it is the whole
schema (every section and key with its help text) plus its parser, kept together so the schema has one home.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..errors import ConfigError


def _field(default: Any, help: str, *, choices: tuple[str, ...] | None = None, factory: Any = None) -> Any:
    metadata = {"help": help, "choices": choices}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class TargetConfig:
    path: str | None = _field(None, "local HF model directory of the target (config.json, *.safetensors, tokenizer)")
    dtype: str = _field("auto", "target weights dtype; auto = bfloat16 on GPU, float32 on CPU",
                        choices=("auto", "float32", "bfloat16", "float16"))
    trust_remote_code: bool = _field(False, "allow the target's own modelling code (off unless you trust it)")
    attn_implementation: str = _field("auto", "attention kernel of the target: auto (sdpa where transformers offers "
                                      "it for the family, else eager), sdpa, eager, flash_attention_2")
    shard: bool = _field(False, "shard the frozen target with FSDP2 over the data-parallel ranks (GPU, big targets)")


@dataclasses.dataclass
class DataConfig:
    train: list[str] = _field(None, "training data: local *.jsonl, *.json (JSON lines or one array), *.parquet, "
                              "*.arrow files, datasets save_to_disk directories, or directories of them (OpenAI "
                              "messages, ShareGPT conversations or input_ids + loss_mask)", factory=list)
    eval: list[str] = _field(None, "held-out evaluation data (same formats); empty = split eval_fraction off train",
                             factory=list)
    eval_fraction: float = _field(0.02, "fraction of train samples held out for eval when data.eval is empty")
    max_eval_samples: int = _field(256, "cap on the held-out split size (0 = no cap)")
    seq_len: int = _field(2048, "truncate every sample to this many tokens (also the packed row length)")
    chat_template: str | None = _field(None, "Jinja chat template file (or string) overriding the tokenizer's, or "
                                       "a built-in: chatml, qwen3-thinking")
    chat_template_kwargs: dict[str, Any] = _field(None, "keywords the chat template reads, e.g. {enable_thinking: "
                                                  "false} (part of an offline cache's identity)", factory=dict)
    packing: bool = _field(False, "pack several samples per row with per-document position_ids")
    on_bad_data: str = _field("error", "malformed line/row: stop with file:line (error) or skip and count it (skip)",
                              choices=("error", "skip"))
    max_samples: int = _field(0, "use only the first N usable samples (0 = all); handy for smoke runs")
    num_workers: int = _field(0, "DataLoader worker processes")


@dataclasses.dataclass
class TrainLoopConfig:
    max_steps: int = _field(1000, "optimizer steps to train")
    batch_size: int = _field(1, "micro-batch size per process (rows)")
    grad_accum: int = _field(1, "micro-batches accumulated per optimizer step")
    lr: float = _field(1e-4, "peak learning rate")
    warmup_ratio: float = _field(0.05, "linear warmup over this fraction of max_steps")
    min_lr_ratio: float = _field(0.1, "cosine decay ends at lr * min_lr_ratio")
    weight_decay: float = _field(0.0, "AdamW weight decay")
    betas: list[float] = _field(None, "AdamW betas", factory=lambda: [0.9, 0.95])
    eps: float = _field(1e-8, "AdamW epsilon")
    clip: float = _field(1.0, "max global gradient norm (0 = no clipping)")
    seed: int = _field(0, "seed of initialisation, data order and method randomness")
    precision: str = _field("auto", "auto = bf16 autocast on GPU, fp32 on CPU", choices=("auto", "fp32", "bf16"))
    device: str = _field("auto", "auto, cpu or cuda")
    eval_every: int = _field(500, "evaluate on the held-out split every N steps (0 = only at the end)")
    eval_batches: int = _field(0, "cap on eval batches per evaluation (0 = the whole split)")
    save_every: int = _field(500, "write a checkpoint every N steps (0 = only at the end)")
    keep_checkpoints: int = _field(2, "keep this many most recent checkpoints (0 = keep all)")
    log_every: int = _field(10, "write train metrics every N steps")
    output_dir: str = _field("runs/draft", "run directory: checkpoints/, metrics.jsonl, final/ (the trained draft)")
    resume: str | None = _field(None, "resume: 'latest' (newest valid checkpoint under output_dir) or a checkpoint "
                                "directory; unset = fresh run")
    init_from: str | None = _field(None, "warm start: fine-tune the draft in this directory (any layout "
                                   "draftsmith.load_draft reads: ours, an engine export, a public checkpoint)")
    overwrite: bool = _field(False, "allow a fresh run in an output_dir that already holds checkpoints (deletes them)")
    offline_features: str | None = _field(None, "train from a `draftsmith prepare-features` cache instead of "
                                          "running the target")
    progress: bool = _field(True, "show a progress bar with ETA (rank 0)")
    trackers: list[str] = _field(None, "experiment trackers fed every train/eval record and the config, rank 0 "
                                 "only: jsonl (metrics.jsonl, always on), tensorboard, wandb, mlflow, or a "
                                 "plugin's (`draftsmith plugins` lists them); options in tracker_options.<name>",
                                 factory=lambda: ["jsonl"])
    tracker_errors: str = _field("stop", "a tracker that fails to start stops the run before step 1 (stop) or is "
                                 "reported and left out (warn); one failing later is always reported and dropped",
                                 choices=("stop", "warn"))


@dataclasses.dataclass
class DistributedConfig:
    strategy: str = _field("ddp", "how the draft is replicated across ranks under torchrun",
                           choices=("ddp", "fsdp"))
    backend: str = _field("auto", "process-group backend: auto = nccl on GPU, gloo on CPU",
                          choices=("auto", "nccl", "gloo"))
    find_unused_parameters: bool = _field(False, "DDP: allow draft parameters that get no gradient in a step")
    fsdp_shard_blocks: bool = _field(False, "FSDP: also shard each repeated draft block (less memory; only for "
                                     "methods that call every block once per step on every rank)")


@dataclasses.dataclass
class RunConfig:
    method: str | None = _field(None, "draft method (see `draftsmith list-drafts`), e.g. eagle3, dflash, dspark")
    target: TargetConfig = _field(None, "the frozen target model", factory=TargetConfig)
    data: DataConfig = _field(None, "training and evaluation data", factory=DataConfig)
    draft: dict[str, Any] = _field(None, "draft options for the draft class's build_draft_config (free-form, "
                                   "e.g. num_draft_layers, target_layer_ids, mask_token_id, block_size)", factory=dict)
    method_options: dict[str, Any] = _field(None, "objective options over the method's defaults (free-form)",
                                            factory=dict)
    tracker_options: dict[str, Any] = _field(None, "per-tracker options, e.g. {wandb: {project: p, mode: offline}, "
                                             "mlflow: {tracking_uri: ..., experiment: e}, tensorboard: {log_dir: d}} "
                                             "(free-form; checked against each tracker's options)", factory=dict)
    train: TrainLoopConfig = _field(None, "optimisation, evaluation, checkpoints", factory=TrainLoopConfig)
    distributed: DistributedConfig = _field(None, "torchrun settings", factory=DistributedConfig)


FREE_FORM = ("draft", "method_options", "tracker_options")
_SECTIONS: dict[str, type] = {"target": TargetConfig, "data": DataConfig, "train": TrainLoopConfig,
                              "distributed": DistributedConfig}


# -- type handling ---------------------------------------------------------------------------------------------
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " | ".join(_type_name(a) for a in args) + " | null"
    if origin in (list, tuple):
        (arg, *_) = typing.get_args(tp) or (Any,)
        return f"list[{_type_name(arg)}]"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(key: str, value: Any, tp: Any, choices: tuple[str, ...] | None) -> Any:
    """``value`` checked against the annotated type ``tp`` (ints accepted for floats, a scalar for a list)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, args[0], choices)
    if origin is list:
        (arg,) = typing.get_args(tp)
        if value is None:
            return []
        items = value if isinstance(value, (list, tuple)) else [value]
        return [_coerce(f"{key}[{i}]", v, arg, None) for i, v in enumerate(items)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = str(value)
            if choices and value not in choices:
                raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value


def all_keys() -> list[str]:
    """Every settable dotted key of the schema (free-form sections appear as their section name)."""
    keys = []
    for f in dataclasses.fields(RunConfig):
        if f.name in _SECTIONS:
            keys.extend(f"{f.name}.{g.name}" for g in dataclasses.fields(_SECTIONS[f.name]))
        else:
            keys.append(f.name)
    return keys


def _unknown(key: str) -> ConfigError:
    leaves: dict[str, str] = {}
    for k in all_keys():
        leaves.setdefault(k.rsplit(".", 1)[-1], k)
    leaf = key.rsplit(".", 1)[-1]
    if leaf in leaves and leaves[leaf] != key:  # the right name in the wrong section (train.seq_len)
        close = [leaves[leaf]]
    else:
        close = difflib.get_close_matches(key, all_keys() + list(_SECTIONS) + list(FREE_FORM), n=1, cutoff=0.6)
        if not close:  # a typo'd leaf in the wrong section
            match = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)
            close = [leaves[match[0]]] if match else []
    hint = f"; did you mean {close[0]!r}?" if close else "; valid keys are listed by `draftsmith train --help`"
    return ConfigError(f"unknown config key {key!r}{hint}")


# -- building ----------------------------------------------------------------------------------------------------
def _build_section(cls: type, values: Mapping[str, Any], prefix: str) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {values!r}")
    hints = _hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            raise _unknown(f"{prefix}.{key}")
        kwargs[key] = _coerce(f"{prefix}.{key}", value, hints[key], names[key].metadata.get("choices"))
    return cls(**kwargs)


def from_dict(values: Mapping[str, Any] | None) -> RunConfig:
    """A validated :class:`RunConfig` from a nested mapping (e.g. a parsed YAML file)."""
    values = dict(values or {})
    kwargs: dict[str, Any] = {}
    top = {f.name: f for f in dataclasses.fields(RunConfig)}
    for key, value in values.items():
        if key not in top:
            raise _unknown(key)
        if key in _SECTIONS:
            kwargs[key] = _build_section(_SECTIONS[key], value or {}, key)
        elif key in FREE_FORM:
            kwargs[key] = _coerce(key, value, dict[str, Any], None)
        else:
            kwargs[key] = _coerce(key, value, _hints(RunConfig)[key], None)
    return RunConfig(**kwargs)


def to_dict(config: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def parse_value(text: str) -> Any:
    """A ``--set`` value: YAML scalars/lists (``3``, ``1e-4``, ``true``, ``[1, 2]``, ``null``) or a plain string."""
    import yaml

    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def apply_override(values: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b=c`` to a nested mapping in place (validated later by :func:`from_dict`)."""
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. train.lr=2e-4), got {assignment!r}")
    set_value(values, key, parse_value(raw))


def set_value(values: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted ``key`` of a nested mapping in place, rejecting keys the schema does not have."""
    parts = key.split(".")
    top = parts[0]
    if top not in {f.name for f in dataclasses.fields(RunConfig)}:
        raise _unknown(key)
    if top in _SECTIONS and len(parts) != 2:
        if len(parts) > 2:
            raise _unknown(key)
        first = dataclasses.fields(_SECTIONS[top])[0].name
        raise ConfigError(f"--set {key}: name a key inside {top!r}, e.g. {top}.{first}")
    if top not in _SECTIONS and top not in FREE_FORM and len(parts) > 1:
        raise _unknown(key)
    node = values
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {part!r} is not a mapping")
        node = child
    node[parts[-1]] = value


def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config sections")
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: Mapping[str, Any] | None = None) -> RunConfig:
    """YAML file (optional) → ``base`` values → ``--set`` overrides, validated against the schema."""
    values = load_yaml(path) if path else {}
    for key, value in (base or {}).items():  # flag values (dotted keys) win over the file
        set_value(values, key, value)
    for assignment in overrides:
        apply_override(values, assignment)
    return from_dict(values)


def dump_yaml(config: RunConfig) -> str:
    import yaml

    return yaml.safe_dump(to_dict(config), sort_keys=False)


# -- checks that need no torch (so the CLI fails fast) --------------------------------------------------------
def check_required(config: RunConfig, *, need_data: bool = True, reading_features: bool = True) -> None:
    """Missing essentials, named by their CLI flag and config key."""
    if not config.method:
        raise ConfigError("no method given: pass --method (config key 'method'); see `draftsmith list-drafts`")
    if not config.target.path:
        raise ConfigError("no target given: pass --target PATH (config key 'target.path')")
    target = Path(config.target.path)
    if not target.exists():
        raise ConfigError(f"target path {config.target.path!r} does not exist")
    if not target.is_dir():
        raise ConfigError(f"target path {config.target.path!r} is not a directory")
    offline = config.train.offline_features if reading_features else None
    if need_data and not config.data.train and not offline:
        raise ConfigError("no training data given: pass --data FILE.jsonl|FILE.parquet|DIR (config key 'data.train')")
    for key, files in (("data.train", config.data.train), ("data.eval", config.data.eval)):
        for f in files:
            if not Path(f).exists():
                from ..data.records import hub_hint

                raise ConfigError(f"{key}: data file {f!r} does not exist{hub_hint(str(f), key)}")
    if offline and not Path(offline).is_dir():
        raise ConfigError(f"train.offline_features: {config.train.offline_features!r} is not a directory")


# -- help ------------------------------------------------------------------------------------------------------
def describe_keys() -> Iterator[tuple[str, str, str, str]]:
    """(dotted key, type, default, help) for every key of the schema, in declaration order."""
    for f in dataclasses.fields(RunConfig):
        if f.name in _SECTIONS:
            cls = _SECTIONS[f.name]
            hints = _hints(cls)
            for g in dataclasses.fields(cls):
                default = g.default_factory() if g.default_factory is not dataclasses.MISSING else g.default
                help_text = g.metadata.get("help", "")
                if g.metadata.get("choices"):
                    help_text += f" [{'|'.join(g.metadata['choices'])}]"
                yield f"{f.name}.{g.name}", _type_name(hints[g.name]), _show(default), help_text
        else:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            yield f.name, _type_name(_hints(RunConfig)[f.name]), _show(default), f.metadata.get("help", "")


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{}"
    return str(value)


def help_text(width: int = 110) -> str:
    """The config reference printed by ``draftsmith train --help``."""
    import textwrap

    lines = ["config keys (YAML sections, or --set KEY=VALUE):"]
    for key, tp, default, text in describe_keys():
        head = f"  {key} ({tp}, default {default})"
        lines.append(head)
        lines.extend(textwrap.wrap(text, width=width, initial_indent="      ", subsequent_indent="      "))
    return "\n".join(lines)
