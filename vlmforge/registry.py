"""Name -> "module:attribute" registries whose entries are imported only when asked for, so that
`vlmforge --help` and workers do not import every builder and backend up front."""

from __future__ import annotations

import importlib
from typing import Any


def load_registered(registry: dict[str, str], name: str, what: str) -> Any:
    """The object registered under `name`; an unknown name is a UserError listing the known ones."""
    from vlmforge.errors import UserError

    try:
        target = registry[name]
    except KeyError:
        raise UserError(f"unknown {what} {name!r}; known: {', '.join(sorted(registry))}") from None
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
