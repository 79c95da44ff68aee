"""State carried by the client: ``encrypted_content`` of reasoning and compaction items, sealed by the gateway.

A stateless chain (``store: false``, the whole history resent, as Codex runs
it) keeps the model's reasoning only on the client. With ``include:
["reasoning.encrypted_content"]`` the gateway seals each reasoning item's text
with AES-256-GCM (``cryptography``) under its key, and opens it again when the
item comes back as input, so the model sees its own earlier reasoning exactly
as it was. A blob that was altered, sealed under another key, or not made by
this gateway is refused (:class:`SealError`), never used.

The key comes from ``reasoning_encryption_key`` (any string; hashed to 32
bytes), or is generated once and kept in a file beside the store, readable by
its owner only; on a shared (PostgreSQL) store, kept in the store, so every replica has it.
Compaction summaries (``engine.compaction``) are sealed under the same key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from requests.common import SEALED_PREFIX

__all__ = ["ReasoningSeal", "SealError", "PREFIX", "load_or_create_key", "make_key"]

#: Every blob this gateway makes starts so; anything else is foreign.
PREFIX = SEALED_PREFIX
_AAD = b"nomyo-router reasoning v1"
#: A compaction summary is sealed under the same key with its own associated data, so a
#: reasoning blob never opens as a summary, nor the other way round.
_SUMMARY_AAD = b"nomyo-router compaction v1"
_NONCE_BYTES = 12


class SealError(ValueError):
    """An ``encrypted_content`` that cannot be opened: foreign, altered or made under another key."""


def make_key() -> bytes:
    """A new random 32-byte key (256 bits)."""
    return secrets.token_bytes(32)


def load_or_create_key(configured: str | None, store_path: str) -> bytes:
    """The 32-byte key: SHA-256 of ``configured`` when set; else the one kept in
    ``<store_path>.reasoning-key`` (made with 256 random bits on first use, mode 0600).
    Raises OSError when the key file can be neither read nor written."""
    if configured:
        return hashlib.sha256(configured.encode()).digest()
    path = Path(f"{store_path}.reasoning-key")
    if path.exists():
        return base64.b64decode(path.read_text().strip())
    key = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(base64.b64encode(key).decode() + "\n")
    return key


class ReasoningSeal:
    """Seals and opens reasoning text under one 32-byte ``key``."""

    def __init__(self, key: bytes):
        self._aead = AESGCM(key)

    def _seal(self, plain: bytes, aad: bytes) -> str:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return PREFIX + base64.b64encode(nonce + self._aead.encrypt(nonce, plain, aad)).decode()

    def _open(self, blob: str, aad: bytes) -> dict:
        if not isinstance(blob, str) or not blob.startswith(PREFIX):
            raise SealError("This encrypted_content was not made by this gateway.")
        try:
            raw = base64.b64decode(blob[len(PREFIX):], validate=True)
            plain = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], aad)
        except (binascii.Error, InvalidTag, ValueError):
            raise SealError("This encrypted_content was altered or sealed under another key.") from None
        return orjson.loads(plain)

    def seal(self, reasoning: dict) -> str:
        """The ``encrypted_content`` of a reasoning item (its ``content`` parts, sealed)."""
        return self._seal(orjson.dumps({"content": reasoning.get("content") or []}), _AAD)

    def open(self, blob: str) -> list[dict]:
        """The ``content`` parts sealed in ``blob``. Raises :class:`SealError`."""
        content = self._open(blob, _AAD).get("content")
        return content if isinstance(content, list) else []

    def seal_summary(self, summary: str) -> str:
        """The ``encrypted_content`` of a ``compaction`` item: its summary text, sealed."""
        return self._seal(orjson.dumps({"summary": summary}), _SUMMARY_AAD)

    def open_summary(self, blob: str) -> str:
        """The summary sealed in a ``compaction`` item's ``blob``. Raises :class:`SealError`."""
        summary = self._open(blob, _SUMMARY_AAD).get("summary")
        return summary if isinstance(summary, str) else ""
