"""Method registrations and the runtime contracts between core and a method plugin.

Core's trainer, decoder and exporter know nothing about EAGLE, DFlash or DSpark: they only talk to a method
through the :class:`MethodSpec` its plugin registers (``draftsmith_register_methods``). This module is
torch-free at import time (it is loaded by ``draftsmith list-drafts``); tensors appear only in annotations.

Conventions fixed here (DESIGN §6):

* A **layer id** means "output of decoder layer i" (HF ``hidden_states[i + 1]``), captured pre-final-norm with
  forward hooks; ``-1`` is the embedding output.
* ``final_hidden`` is the *post-final-norm* last hidden state, i.e. exactly the ``lm_head`` input, so
  ``heads.lm_head(final_hidden)`` are the target's logits. Methods that need target logits ask for
  ``final_hidden`` and apply ``heads.lm_head`` themselves (offline feature files then stay small: H per token,
  not V).

Slightly over ~300 lines: the whole plugin contract (data passed both ways, the protocols and their optional
capabilities, MethodSpec) is read in one place.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence, Union, runtime_checkable

from .spec import import_object, object_path

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclasses.dataclass(frozen=True)
class TargetRequest:
    """Which target tensors a method needs for one batch (training) or one verified span (decoding)."""

    layer_ids: tuple[int, ...] = ()  # output-of-layer ids (-1 = embedding output), in the order the draft wants
    final_hidden: bool = False  # post-final-norm hidden (the lm_head input)

    def __post_init__(self) -> None:
        object.__setattr__(self, "layer_ids", tuple(int(i) for i in self.layer_ids))


@dataclasses.dataclass
class TargetFeatures:
    """Captured target tensors for a batch; every tensor is ``(B, T, ·)`` aligned with the input positions."""

    hidden_states: dict[int, "torch.Tensor"]  # layer id -> (B, T, H)
    final_hidden: "torch.Tensor | None" = None  # (B, T, H), post-norm

    def stacked(self, layer_ids: Sequence[int]) -> "torch.Tensor":
        """The requested layers concatenated on the last dim: (B, T, len(layer_ids)·H)."""
        import torch

        return torch.cat([self.hidden_states[i] for i in layer_ids], dim=-1)


@dataclasses.dataclass
class TargetHeads:
    """The target's frozen token embedding and output head, shared with drafts as each method requires.

    ``embed_tokens`` is an ``nn.Embedding`` and ``lm_head`` an ``nn.Linear`` (full target vocab). They are
    never trained; a method decides whether its draft copies them or references them.

    ``logit_scale`` / ``logit_softcap`` are what the target's forward applies after ``lm_head``
    (:func:`draftsmith.conventions.output_logit_transform`: Granite's ``1/logits_scaling``, Cohere's
    ``logit_scale``, Gemma 2's ``final_logit_softcapping``). Teachers come from :meth:`target_logits`, which
    equals the target's own logits; a draft's logits stay raw (engines apply neither to a draft head).
    """

    embed_tokens: Any
    lm_head: Any
    vocab_size: int
    pad_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    logit_scale: float = 1.0
    logit_softcap: float | None = None

    def adjust_logits(self, logits: "torch.Tensor") -> "torch.Tensor":
        """The target's post-``lm_head`` transform, ``cap · tanh(scale · z / cap)``, of raw logits ``z`` (any
        shape); ``z`` itself when the target applies none."""
        import torch

        if self.logit_scale != 1.0:
            logits = logits * self.logit_scale
        if self.logit_softcap:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits

    def target_logits(self, final_hidden: "torch.Tensor") -> "torch.Tensor":
        """The target's logits (fp32) of post-norm hidden states: ``(..., H) -> (..., V)``, exactly what its
        forward returns (lm_head with its bias, then :meth:`adjust_logits`)."""
        import torch.nn.functional as F

        from .nn.weights import full_tensor, weight_of

        weight = weight_of(self.lm_head)  # gathered when FSDP-sharded
        bias = getattr(self.lm_head, "bias", None)
        bias = full_tensor(bias) if bias is not None else None
        return self.adjust_logits(F.linear(final_hidden.to(weight.dtype), weight, bias).float())


@dataclasses.dataclass
class ObjectiveOutput:
    """What an objective returns for one micro-batch.

    ``loss`` is the scalar to back-propagate, already normalised the way the method defines (per valid token,
    weighted mean, ...). ``metrics`` are detached scalars (floats or 0-d tensors) for logging, e.g.
    ``accuracy``, ``tau_sim`` (simulated acceptance length), ``acc@k``. ``num_tokens`` counts supervised
    tokens (for throughput and for weighting metrics across micro-batches).
    """

    loss: "torch.Tensor"
    metrics: dict[str, Any]
    num_tokens: int


class Objective(Protocol):
    """A method's training objective, built once per run by ``MethodSpec.objective``.

    Constructed as ``objective_cls(draft, heads, **options)``; it may bind the target heads into the draft
    (copy or reference) and prepare method state (e.g. EAGLE-3's draft vocabulary from token counts).
    """

    def target_request(self) -> TargetRequest:
        """The target tensors ``__call__`` needs."""
        ...

    def __call__(self, batch: Mapping[str, "torch.Tensor"], features: TargetFeatures) -> ObjectiveOutput:
        """Loss and metrics for ``batch`` (``input_ids``, ``attention_mask``, ``loss_mask``, optional
        ``position_ids``; all ``(B, T)``) given the captured target features of that batch."""
        ...



# Optional capabilities of an objective (core checks them with isinstance on these runtime protocols).
@runtime_checkable
class PreparesFromTokenCounts(Protocol):
    def prepare(self, token_counts: "torch.Tensor") -> None:
        """Called once on a fresh run with supervised-token frequencies over the target vocab (1-D long),
        e.g. to choose EAGLE-3's draft vocabulary."""
        ...


@runtime_checkable
class ReportsAcceptanceLengths(Protocol):
    def acceptance_lengths(self, batch: Mapping[str, "torch.Tensor"], features: TargetFeatures) -> "torch.Tensor":
        """``(B, T)`` long: for every position ``a`` usable as a decoding anchor, how many drafts greedy drafting
        from anchor ``a`` (target features ``< a`` known, token ``a`` given) would get right in a row against
        the batch's tokens; ``-1`` where ``a`` is not a usable anchor. On sequences that are the target's own
        greedy output, core's trajectory replay (:mod:`draftsmith.decode.estimate`) turns this into the exact
        greedy acceptance length τ."""
        ...


@runtime_checkable
class HasRunState(Protocol):
    def run_state(self) -> dict[str, Any]:
        """Plain (JSON-able) state the objective needs to resume bit-exactly — the positions of its random
        streams (:class:`draftsmith.nn.random_stream.RandomStream`); saved in every training checkpoint."""
        ...

    def load_run_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`run_state` returned."""
        ...


@dataclasses.dataclass
class Proposal:
    """Draft tokens for one speculative round (batch size 1).

    ``tokens[i]`` is a drafted token id (target vocab). ``parents[i]`` is the index of the node it follows, or
    ``-1`` when it directly follows the anchor; ``parents=None`` means a chain (``parents[i] = i - 1``).
    ``probs[i]`` is the draft distribution ``q`` the token was drawn from, over the full target vocab, needed
    for rejection sampling at temperature > 0 (``None`` for greedy drafting).
    """

    tokens: "torch.Tensor"  # (k,) long
    probs: "torch.Tensor | None" = None  # (k, V) float
    parents: "torch.Tensor | None" = None  # (k,) long, -1 = the anchor


class Drafter(Protocol):
    """A method's drafting procedure for speculative decoding, one request at a time.

    Constructed as ``drafter_cls(draft, heads, **options)``. The engine owns the target and its KV cache;
    the drafter owns the draft and its own cache. Round protocol (positions are absolute):

    1. ``start(prompt_ids, features)`` after the target prefill: ``features`` cover positions ``0..n-1``.
    2. ``propose(anchor, num_tokens, temperature)``: the anchor is the last committed token (position
       ``n``), whose target features are not known yet. Returns a :class:`Proposal`.
    3. The engine verifies, commits ``anchor + accepted drafts`` and a bonus token, and calls
       ``commit(tokens, features)`` with the committed tokens' ids (anchor first, bonus excluded) and their
       freshly captured target features (same length). The drafter must drop any state of rejected drafts.
    """

    def target_request(self) -> TargetRequest: ...

    def start(self, prompt_ids: "torch.Tensor", features: TargetFeatures) -> None: ...

    def propose(self, anchor: int, num_tokens: int, temperature: float = 0.0,
                generator: "torch.Generator | None" = None) -> Proposal: ...

    def commit(self, tokens: "torch.Tensor", features: TargetFeatures) -> None: ...


@runtime_checkable
class SuggestsNumTokens(Protocol):
    """Optional for a drafter: how many drafts a round asks when the user does not say (a chain drafter's depth,
    a block drafter's drafts per pass, a tree drafter's node budget)."""

    default_num_tokens: int


# "module:QualName" or the object itself (imported on first use).
ImportRef = Union[str, Callable[..., Any]]
# option name -> default (None = derived, e.g. from the target or the draft); the names a component accepts.
OptionTable = Mapping[str, Any]


def _load(obj: Any) -> Any:
    return import_object(obj) if isinstance(obj, str) else obj


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """A speculative-decoding method, registered by its plugin through ``draftsmith_register_methods``.

    * ``objective``: class built as ``objective(draft, heads, **objective options)`` (see :class:`Objective`).
    * ``drafter``: class built as ``drafter(draft, heads, **drafter options)`` (see :class:`Drafter`).
    * ``layer_policy``: ``f(num_target_layers, **draft options) -> list[int]``, the method's default captured
      layer ids (output-of-layer); the draft builder applies it and ``draftsmith resolve`` reports it.
    * ``drafts_from``: use another method's registered drafts (``eagle2`` drafts with the ``eagle1`` models).
    * ``export_formats``: format name → ``f(draft, out_dir, **options)`` writing an engine checkpoint.
    * ``draft_options`` / ``objective_options`` / ``drafter_options``: the options each component accepts, name →
      default (``None`` = derived from the target or the draft). Declared once here; core validates the user's
      options against them and routes each to the component(s) declaring it (:meth:`route_options`: a typo, or a
      contradiction between the config's ``draft:`` and ``method_options:`` sections, is a one-line ConfigError),
      objective and drafter defaults applied. ``None`` (undeclared) passes a section through unchecked.
      ``default_options`` (the older field) gives objective defaults without declaring the accepted names; it
      always reads as the objective defaults.

    Callables may be given as ``"module:QualName"`` strings (:data:`ImportRef`) and are imported on first use.
    """

    name: str
    summary: str = ""
    objective: ImportRef | None = None
    drafter: ImportRef | None = None
    layer_policy: ImportRef | None = None
    drafts_from: str | None = None
    export_formats: Mapping[str, ImportRef] = dataclasses.field(default_factory=dict)
    draft_options: OptionTable | None = None
    objective_options: OptionTable | None = None
    drafter_options: OptionTable | None = None
    default_options: OptionTable | None = None
    plugin: str | None = None
    distribution: str | None = None
    version: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"MethodSpec.name must be a non-empty string, got {self.name!r}")
        object.__setattr__(self, "export_formats", dict(self.export_formats))
        if self.objective_options is not None and self.default_options is not None \
                and dict(self.objective_options) != dict(self.default_options):
            raise ValueError(f"method {self.name!r}: objective_options and default_options (its older name) differ")
        for field in ("draft_options", "objective_options", "drafter_options"):
            value = getattr(self, field)
            if value is not None:
                object.__setattr__(self, field, dict(value))
        # default_options alone gives defaults without declaring the accepted names (older plugins)
        defaults = self.objective_options if self.objective_options is not None else self.default_options
        object.__setattr__(self, "default_options", dict(defaults or {}))

    @property
    def draft_method(self) -> str:
        """The method whose draft registrations this method uses."""
        return self.drafts_from or self.name

    def load_objective(self) -> Callable[..., Objective]:
        if self.objective is None:
            raise NotImplementedError(f"method {self.name!r} registers no training objective")
        return _load(self.objective)

    def load_drafter(self) -> Callable[..., Drafter]:
        if self.drafter is None:
            raise NotImplementedError(f"method {self.name!r} registers no drafting procedure")
        return _load(self.drafter)

    def default_layer_ids(self, num_target_layers: int, **options: Any) -> list[int]:
        if self.layer_policy is None:
            return []
        return list(_load(self.layer_policy)(num_target_layers, **options))

    def load_exporter(self, fmt: str) -> Callable[..., Any]:
        if fmt not in self.export_formats:
            raise KeyError(fmt)
        return _load(self.export_formats[fmt])

    # -- options (the rules live in draftsmith.options) --------------------------------------------------------
    def _tables(self) -> dict[str, OptionTable | None]:
        return {"draft": self.draft_options, "method_options": self.objective_options,
                "drafter": self.drafter_options}

    def check_options(self, section: str, options: Mapping[str, Any]) -> None:
        """ConfigError for options the ``section``'s component (``draft``, ``method_options`` or ``drafter``)
        does not declare, naming the section an option does belong to."""
        from .options import check_section

        check_section(self.name, self._tables(), section, options)

    def route_options(self, draft: Mapping[str, Any] | None = None, method_options: Mapping[str, Any] | None = None
                      ) -> tuple[dict[str, Any], dict[str, Any]]:
        """``(draft kwargs, objective kwargs)`` from a run config's ``draft:`` and ``method_options:`` sections
        (see :func:`draftsmith.options.route`)."""
        from .options import route

        return route(self.name, self._tables(), self.default_options, draft or {}, method_options or {})

    def objective_kwargs(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The objective's keyword arguments: declared defaults overridden by ``options`` (checked)."""
        self.check_options("method_options", options)
        return {**self.default_options, **options}

    def drafter_kwargs(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The drafter's keyword arguments: declared defaults overridden by ``options`` (checked)."""
        self.check_options("drafter", options)
        return {**(self.drafter_options or {}), **options}

    def draft_kwargs(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The draft builder's keyword arguments (checked; the draft applies its own defaults, the declared ones)."""
        self.check_options("draft", options)
        return dict(options)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "summary": self.summary,
            "drafts_from": self.drafts_from,
            "objective": object_path(self.objective) if self.objective is not None else None,
            "drafter": object_path(self.drafter) if self.drafter is not None else None,
            "layer_policy": object_path(self.layer_policy) if self.layer_policy is not None else None,
            "export_formats": sorted(self.export_formats),
            "draft_options": sorted(self.draft_options) if self.draft_options is not None else None,
            "objective_options": dict(self.objective_options) if self.objective_options is not None else None,
            "drafter_options": dict(self.drafter_options) if self.drafter_options is not None else None,
            "plugin": self.plugin,
            "distribution": self.distribution,
            "version": self.version,
        }

    def with_provenance(self, plugin: str | None, distribution: str | None, version: str | None) -> "MethodSpec":
        return dataclasses.replace(self, plugin=plugin, distribution=distribution, version=version)
