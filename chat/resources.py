"""The files sidechat ships beside its code: the schema and the page.

The repository keeps them at its root (`schema.sql`, `static/`); a wheel carries them
inside the package (see `[tool.hatch.build.targets.wheel.force-include]`). So we
look inside the package first, then beside it, which is where they are in a source
checkout and its editable install.
"""

from __future__ import annotations

from pathlib import Path

from .errors import StartupError

_PACKAGE = Path(__file__).resolve().parent


def resource(name: str) -> Path:
    """The shipped file or directory `name`; a `StartupError` when the installation lacks it."""
    for place in (_PACKAGE / name, _PACKAGE.parent / name):
        if place.exists():
            return place
    raise StartupError(f"this installation of sidechat is incomplete: {name} is missing from {_PACKAGE}")
