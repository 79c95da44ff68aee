"""What every translation module shares: the input error, id making, and plain data."""

from __future__ import annotations

import secrets
from typing import Any

from pydantic import BaseModel

__all__ = ["InvalidInput", "new_id", "plain", "SEALED_PREFIX"]

#: How every reasoning ``encrypted_content`` this gateway seals begins (see ``reasoning_seal``).
SEALED_PREFIX = "nomyo1:"

_PRIMITIVES = (str, int, float, bool, type(None))


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


def plain(obj: Any) -> Any:
    """Return ``obj`` as plain dicts and lists.

    Dicts are returned as they are (assumed plain already); pydantic models
    (the ``openai`` SDK's objects) as the JSON data they were made from (fields
    never set are left out, not null); other objects with a ``model_dump`` via
    it; other objects via their attributes, recursively.
    """
    if isinstance(obj, dict) or isinstance(obj, _PRIMITIVES):
        return obj
    if isinstance(obj, (list, tuple)):
        return [plain(x) for x in obj]
    if isinstance(obj, BaseModel):
        return obj.model_dump(mode="json", exclude_unset=True)
    dump = getattr(obj, "model_dump", None)
    if dump is not None:
        return dump()
    if hasattr(obj, "__dict__"):
        return {k: plain(v) for k, v in vars(obj).items() if not k.startswith("_")}
    return obj
