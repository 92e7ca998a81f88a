"""Every hookspec has a heading with its signature in docs/plugin-hooks.md."""

import inspect

from draftsmith import hookspecs

from support import REPO


def test_every_hook_is_documented():
    doc = (REPO / "docs" / "plugin-hooks.md").read_text()
    hooks = [n for n in dir(hookspecs) if n.startswith("draftsmith_")]
    assert len(hooks) >= 3
    for name in hooks:
        fn = getattr(hookspecs, name)
        assert fn.__doc__ and len(fn.__doc__.strip()) > 40, f"{name} has no docstring"
        signature = f"{name}({', '.join(inspect.signature(fn).parameters)})"
        assert f"## `{signature}`" in doc, f"docs/plugin-hooks.md lacks a heading for {signature}"
