"""Write docs/configuration.md, the reference of every configuration key, from the settings
model itself (``config.Settings``: names, types, defaults, aliases) and the ``#:`` comments
above each field in config.py.

    python scripts/config_reference.py            # rewrite docs/configuration.md
    python scripts/config_reference.py --check    # exit 1 when the file is out of date
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pydantic import AliasChoices  # noqa: E402

from config import Settings  # noqa: E402
from engine.gateway import RESTART_ONLY  # noqa: E402

OUT = ROOT / "docs" / "configuration.md"

HEADER = """# Configuration reference

The gateway reads `config.yaml` (or the file named by `--config` / `NOMYO_ROUTER_CONFIG_PATH`);
every key can also be set in the environment as `NOMYO_ROUTER_<KEY>` (upper case), which wins
over the file. List keys take JSON or a plain comma list there, mapping keys JSON. `${NAME}` in
any string of the file is replaced by the environment variable `NAME`; an unset one stops
start-up, but in `api_keys` (the endpoint then gets no key, with a warning). A key left empty in
the file means its default, but `cache_ttl: null` means no expiry. Times are seconds, sizes
bytes. `python serve.py --check-config` prints the effective configuration with secrets masked.
SIGHUP reloads it, except the keys marked "restart".

This page is generated from `config.py` by `python scripts/config_reference.py`.

| key | type | default | environment | what it is |
| --- | --- | --- | --- | --- |
"""


def _comments() -> dict[str, str]:
    """The ``#:`` comment lines above each field of ``Settings``, joined, by field name."""
    source = (ROOT / "config.py").read_text().splitlines()
    tree = ast.parse("\n".join(source))
    found: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "Settings":
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    lines, row = [], stmt.lineno - 2
                    while row >= 0 and source[row].strip().startswith("#:"):
                        lines.insert(0, source[row].strip()[2:].strip())
                        row -= 1
                    found[stmt.target.id] = " ".join(lines)
    return found


def _type(annotation: object) -> str:
    text = str(annotation).replace("typing.", "").replace("config.", "")
    return text.replace("<class '", "").replace("'>", "").replace("|", "or")


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    else:
        value = field.default
    return "(none)" if value is None else f"`{value!r}`".replace("|", "\\|")


def render() -> str:
    """The whole reference page."""
    comments = _comments()
    rows = []
    for name, field in Settings.model_fields.items():
        keys = [name]
        if isinstance(field.validation_alias, AliasChoices):
            keys = [c for c in field.validation_alias.choices if isinstance(c, str) and not c.isupper()]
        env = f"NOMYO_ROUTER_{name.upper()}"
        if name == "router_api_key":
            env = "NOMYO_ROUTER_API_KEY"
        what = comments.get(name) or ""
        if name in RESTART_ONLY:
            what += " (restart)"
        rows.append(f"| {' / '.join(f'`{k}`' for k in keys)} | {_type(field.annotation)} | {_default(field)} "
                    f"| `{env}` | {what.replace('|', '/').strip()} |")
    return HEADER + "\n".join(rows) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when docs/configuration.md is out of date")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python scripts/config_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
