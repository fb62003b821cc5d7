"""The optional packages of the export extra, imported with a one-line error naming it."""

from __future__ import annotations

import importlib
from types import ModuleType

from instseg.utils.errors import InstsegError


def require(package: str, needed_by: str | None = None) -> ModuleType:
    """`package` imported, or an InstsegError naming the extra that installs it."""
    try:
        return importlib.import_module(package)
    except ImportError:
        raise InstsegError(f"{needed_by or package} needs the {package} package: "
                           "pip install -e \".[export]\"") from None
