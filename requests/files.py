"""The text of an ``input_file`` for a Chat Completions model (pure: bytes in, text out).

A Chat model takes no files, so a file becomes text: a text type (``text/*``, JSON,
XML, YAML, CSV, source code) is decoded as UTF-8, a PDF has its text extracted with
``pypdf``, page by page. The file's type comes from its data URL
(``data:application/pdf;base64,...``), else from the ``Content-Type`` it was fetched
with, else from its ``filename``. Anything else, or a file that will not decode, is
:class:`InvalidInput` (a 400 naming the part).
"""

from __future__ import annotations

import base64
import binascii
import io
import mimetypes

from pypdf import PdfReader
from pypdf.errors import PdfReadError

from requests.common import InvalidInput

__all__ = ["file_data_bytes", "file_text", "part_text"]

_TEXT_TYPES = frozenset({
    "application/json", "application/xml", "application/x-yaml", "application/yaml", "application/javascript",
    "application/x-python", "application/csv", "application/x-sh", "application/sql", "application/toml",
    "application/x-ndjson", "application/ld+json",
})
_PDF = "application/pdf"


def _kind(mime: str | None, filename: str | None) -> str | None:
    mime = (mime or "").split(";")[0].strip().lower() or None
    if mime in (None, "application/octet-stream") and filename:
        mime = mimetypes.guess_type(filename, strict=False)[0]
        if mime is None and filename.lower().endswith((".md", ".txt", ".log", ".yaml", ".yml", ".toml", ".py")):
            mime = "text/plain"
    return mime


def file_data_bytes(file_data: str, where: str) -> tuple[bytes, str | None]:
    """The bytes of an ``input_file``'s ``file_data`` (a base64 data URL, or bare base64) and the
    type its data URL names. Raises :class:`InvalidInput` for data that is not base64."""
    mime = None
    payload = file_data
    if file_data.startswith("data:"):
        header, sep, payload = file_data[5:].partition(",")
        if not sep or not header.endswith(";base64"):
            raise InvalidInput("'file_data' must be base64: a data URL 'data:<type>;base64,...' or base64 alone.",
                               f"{where}.file_data")
        mime = header[: -len(";base64")] or None
    try:
        return base64.b64decode(payload, validate=True), mime
    except (binascii.Error, ValueError):
        raise InvalidInput("'file_data' is not valid base64.", f"{where}.file_data") from None


def _pdf_text(data: bytes, where: str) -> str:
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise InvalidInput("This PDF is encrypted; its text cannot be read.", where, "unsupported_file")
        pages = [page.extract_text() or "" for page in reader.pages]
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise InvalidInput(f"This PDF could not be read: {exc}.", where, "unsupported_file") from None
    return "\n\n".join(text.strip() for text in pages if text.strip())


def file_text(data: bytes, mime: str | None, filename: str | None, where: str) -> str:
    """The text of a file of type ``mime`` (or by ``filename``). Raises :class:`InvalidInput`
    (``unsupported_file``) for a type that has no text this gateway can read, or text that is not UTF-8."""
    kind = _kind(mime, filename)
    if kind == _PDF:
        return _pdf_text(data, where)
    if kind is not None and (kind.startswith("text/") or kind in _TEXT_TYPES or kind.endswith(("+json", "+xml"))):
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"This {kind} file is not UTF-8 text.", where, "unsupported_file") from None
    raise InvalidInput(f"A Chat Completions model takes a file only as text: this gateway reads text files and PDFs, "
                       f"not {kind or 'a file of unknown type'}.", where, "unsupported_file")


def part_text(part: dict, where: str, fetched: dict[str, tuple[bytes, str | None]]) -> str:
    """The text an ``input_file`` content ``part`` stands for, headed by its name: from its ``file_data``,
    or from what its ``file_url`` brought (``fetched``, by URL). Raises :class:`InvalidInput` for a
    ``file_id`` (the gateway stores no files) and for what :func:`file_text` cannot read."""
    name = part.get("filename")
    if isinstance(part.get("file_data"), str):
        data, mime = file_data_bytes(part["file_data"], where)
    elif isinstance(part.get("file_url"), str) and part["file_url"] in fetched:
        data, mime = fetched[part["file_url"]]
        name = name or part["file_url"].rsplit("/", 1)[-1].split("?")[0] or None
    elif isinstance(part.get("file_url"), str):
        raise InvalidInput("This file_url was not fetched.", f"{where}.file_url", "file_url_not_allowed")
    else:
        raise InvalidInput("This model's endpoint speaks Chat Completions, and this gateway keeps no files: send "
                           "an input_file as 'file_data' or 'file_url', not by 'file_id'.", where, "unsupported_file")
    return f"{name or 'file'}:\n{file_text(data, mime, name, where)}"
