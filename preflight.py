"""Checks made before the gateway imports anything of its own.

The gateway's wire-format package is named ``requests`` (the user's choice of
name), which shadows the PyPI HTTP library of that name. When another
``requests`` is found first on ``sys.path`` the gateway cannot run; this says so
in one sentence instead of an ImportError deep inside the app.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["own_requests_problem", "ensure_own_requests_package"]

HERE = Path(__file__).resolve().parent


def own_requests_problem() -> str | None:
    """None when ``import requests`` gives this project's package, else the sentence saying why not."""
    spec = importlib.util.find_spec("requests")
    origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
    if origin is not None and origin == HERE / "requests" / "__init__.py":
        return None
    found = origin.parent if origin is not None else "nothing"
    return (f"nomyo-router: 'import requests' finds {found}, not this project's requests/ package in "
            f"{HERE}; run the gateway from its own folder (uvicorn router:app) with that folder first on "
            "sys.path, and keep the PyPI 'requests' library out of its process.")


def ensure_own_requests_package() -> None:
    """Stop the process (SystemExit with :func:`own_requests_problem`'s sentence) unless
    ``requests`` is this project's package."""
    problem = own_requests_problem()
    if problem is not None:
        raise SystemExit(problem)
