"""Functions named ``module:function`` in the settings: the extension and authorize hooks."""

from __future__ import annotations

import importlib
from typing import Any

from .errors import InvalidSettings

__all__ = ["load_hook"]


def load_hook(spec: str, what: str) -> Any:
    """Resolve ``module:function``. A module or a function that is not there, or is not
    callable, is `InvalidSettings` (one line, not an import's traceback); an error the
    module's own code raises as it is imported goes out as it is, for its author."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InvalidSettings(f"{what} must be 'module:function', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name != missing and not module_name.startswith(f"{missing}."):
            raise  # a module the hook's own module imports
        raise InvalidSettings(f"{what} {spec!r}: no module named {missing!r}") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise InvalidSettings(f"{what} {spec!r}: {module_name} has no function {attr!r}")
    return function
