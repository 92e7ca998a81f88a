"""Method options: the rules by which core checks a user's options against a method's declared tables and routes
them to the draft, the objective and the drafter (``MethodSpec.route_options`` and friends).

A table maps option name → default; a method declares one per component (``draft_options``,
``objective_options``, ``drafter_options``) or ``None`` to accept anything. Torch-free.
"""

from __future__ import annotations

from typing import Any, Mapping

from .errors import ConfigError

Tables = Mapping[str, "Mapping[str, Any] | None"]  # section ("draft", "method_options", "drafter") -> table


def check_section(method: str, tables: Tables, section: str, options: Mapping[str, Any]) -> None:
    """ConfigError for options of ``section`` its table does not declare, naming the section each belongs to."""
    own = tables[section]
    if own is None:
        return
    unknown = sorted(set(options) - set(own))
    if not unknown:
        return
    where = {name: [s for s, t in tables.items() if s != section and t is not None and name in t] for name in unknown}
    hints = "; ".join(f"{n} is a {'/'.join(w)} option" for n, w in where.items() if w)
    raise ConfigError(f"method {method!r}: unknown {section} option(s) {unknown}"
                      f"{' (' + hints + ')' if hints else ''}; {section} options: {sorted(own)}")


def route(method: str, tables: Tables, objective_defaults: Mapping[str, Any], draft: Mapping[str, Any],
          method_options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(draft kwargs, objective kwargs)`` from a run config's ``draft:`` and ``method_options:`` sections.

    With both tables declared the two sections are one namespace: every option goes to each component that
    declares it (e.g. DSpark's ``num_anchors`` to the draft config and to the objective), wherever the user wrote
    it; an option no component declares, or one given in both sections with different values, is a ConfigError.
    The objective gets its declared defaults under the user's values; the draft applies its own defaults (the
    same table). With a table undeclared the sections stay as given (a declared one is still checked).
    """
    draft, method_options = dict(draft), dict(method_options)
    draft_table, objective_table = tables["draft"], tables["method_options"]
    if draft_table is None or objective_table is None:
        check_section(method, tables, "draft", draft)
        check_section(method, tables, "method_options", method_options)
        return draft, {**objective_defaults, **method_options}
    clash = sorted(k for k in set(draft) & set(method_options) if draft[k] != method_options[k])
    if clash:
        raise ConfigError(f"method {method!r}: option(s) {clash} given in both draft and method_options with "
                          f"different values: " + ", ".join(f"{k}={draft[k]!r} vs {method_options[k]!r}"
                                                             for k in clash))
    given = {**method_options, **draft}
    unknown = sorted(set(given) - set(draft_table) - set(objective_table))
    if unknown:
        raise ConfigError(f"method {method!r}: unknown option(s) {unknown}; draft options: {sorted(draft_table)}; "
                          f"method_options: {sorted(objective_table)}")
    to_draft = {k: v for k, v in given.items() if k in draft_table}
    to_objective = {k: v for k, v in given.items() if k in objective_table}
    return to_draft, {**objective_defaults, **to_objective}
