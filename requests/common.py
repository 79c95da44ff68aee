"""What every translation module shares: the input error and id making."""

from __future__ import annotations

import secrets

__all__ = ["InvalidInput", "new_id"]


class InvalidInput(ValueError):
    """Input that cannot be translated; the HTTP layer answers 400.

    ``param`` names the offending request field in OpenAI's dotted form
    (``input[2].content[0]``), ``code`` is a machine-readable reason or None.
    """

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


def new_id(prefix: str) -> str:
    """Return ``<prefix>_<48 hex digits>``: 192 random bits, unguessable."""
    return f"{prefix}_{secrets.token_hex(24)}"
