"""The container image and the documented commands stay in step with the code."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_image_copies_every_module_the_app_needs():
    copied = set()
    for line in _dockerfile().splitlines():
        if line.startswith("COPY "):
            copied.update(p.rstrip("/") for p in line.split()[1:-1])
    modules = {p.name for p in ROOT.glob("*.py")}
    assert modules <= copied, f"not copied into the image: {sorted(modules - copied)}"
    app_packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench"}
    assert app_packages <= copied, f"packages not copied into the image: {sorted(app_packages - copied)}"
    assert {"api", "engine", "requests", "config.yaml", "pyproject.toml"} <= copied


def test_image_runs_the_gateway_as_documented():
    text = _dockerfile()
    assert re.search(r'CMD \["python", "serve.py", "--host", "0.0.0.0", "--port", "12434"\]', text)
    assert "EXPOSE 12434" in text and 'VOLUME ["/app/data"]' in text
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    assert "HEALTHCHECK" in text and "/health/live" in text
    assert "pip install --no-cache-dir ." in text  # the same install step as the README and CI


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/test.sh" in readme
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/pip install ." in readme and ".venv/bin/python serve.py" in readme
