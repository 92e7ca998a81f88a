"""Exception types of draftsmith.

Every error a user can cause derives from :class:`DraftsmithError`, so the CLI can print it as one clear line
instead of a traceback.
"""

from __future__ import annotations


class DraftsmithError(Exception):
    """Base class of the errors draftsmith raises for bad input or a bad environment."""


class DraftNotFoundError(DraftsmithError, LookupError):
    """No registered draft serves the requested (method, architecture) pair."""


class DraftConflictError(DraftsmithError):
    """Two distributions registered the same (method, architecture) pair at the same priority."""


class PluginLoadError(DraftsmithError):
    """A plugin failed to import or register (raised only in strict mode; otherwise recorded as BrokenPlugin)."""


class ConfigError(DraftsmithError, ValueError):
    """A malformed configuration value, file or option."""


class DataError(DraftsmithError, ValueError):
    """Malformed, empty or unusable training / evaluation data."""


class TrainingError(DraftsmithError, RuntimeError):
    """Training cannot continue (non-finite loss, incompatible checkpoint, ...)."""
