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


def test_the_configuration_reference_is_generated_from_the_settings():
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "scripts/config_reference.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    from config import Settings
    text = (ROOT / "docs" / "configuration.md").read_text()
    for name in Settings.model_fields:
        assert f"`NOMYO_ROUTER_{name.upper()}`" in text or name == "router_api_key", name


def test_the_troubleshooting_page_covers_every_error_code_the_gateway_answers():
    import re
    sources = [p for d in ("api", "engine", "requests") for p in (ROOT / d).glob("*.py")]
    sources += [ROOT / name for name in ("backends.py", "chat_client.py", "errors.py", "router.py")]
    codes = set()
    for path in sources:
        codes.update(re.findall(r'code="([a-z_]+)"', path.read_text()))
        codes.update(re.findall(r'InvalidInput\([^)]*"([a-z]+_[a-z_]+)"\)', path.read_text(), re.S))
    from requests.validation import CreateResponseBody
    codes -= set(CreateResponseBody.model_fields)          # params of InvalidInput, not codes
    page = (ROOT / "docs" / "troubleshooting.md").read_text()
    missing = sorted(code for code in codes if f"`{code}`" not in page)
    assert codes and not missing, missing


def test_the_image_keeps_every_written_file_on_the_data_volume():
    text = _dockerfile()
    assert "NOMYO_ROUTER_DB_PATH=/app/data/" in text and "NOMYO_ROUTER_CACHE_DB_PATH=/app/data/" in text
    assert "--no-access-log" not in text and "rm -rf build" in text
