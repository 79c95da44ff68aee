"""config.py: NOMYO Router's keys, ${ENV} expansion, environment overrides, clear errors."""

from __future__ import annotations

import pytest

from config import ConfigError, load_settings


def _write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_existing_keys_and_env_expansion(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_KEY", "sk-123")
    monkeypatch.setenv("ROUTER_KEY", "secret")
    monkeypatch.delenv("NOMYO_ROUTER_API_KEY", raising=False)
    monkeypatch.delenv("NOMYO_ROUTER_DB_PATH", raising=False)
    s = load_settings(_write(tmp_path, """
endpoints: [http://a:11434, "https://api.openai.com/v1/"]
llama_server_endpoints: [http://l:8080/v1]
max_concurrent_connections: 3
api_keys: {"https://api.openai.com/v1": "${OPENAI_KEY}"}
nomyo-router-api-key: "${ROUTER_KEY}"
cache_enabled: true
cache_backend: sqlite
cache_ttl: 60
cache_db_path: /tmp/c.db
"""))
    assert s.endpoints == ["http://a:11434", "https://api.openai.com/v1"]
    assert s.api_keys["https://api.openai.com/v1"] == "sk-123"
    assert s.router_api_keys == ["secret"]
    assert (s.max_concurrent_connections, s.cache_backend, s.cache_ttl) == (3, "sqlite", 60)


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("NOMYO_ROUTER_DB_PATH", "/data/x.db")
    monkeypatch.setenv("NOMYO_ROUTER_API_KEY", "from-env")
    s = load_settings(_write(tmp_path, "db_path: ./here.db\nnomyo-router-api-key: from-file\n"))
    assert s.db_path == "/data/x.db" and s.router_api_keys == ["from-env"]


@pytest.mark.parametrize("text, key", [
    ("max_concurrent_connections: 0", "max_concurrent_connections"),
    ("cache_backend: redis", "cache_backend"),
    ("endpoints: [ftp://x]", "endpoints"),
    ("no_such_key: 1", "no_such_key"),
    ("endpoints: [", "YAML"),
    ("- a list", "mapping"),
])
def test_bad_config_names_the_key(tmp_path, monkeypatch, text, key):
    monkeypatch.delenv("NOMYO_ROUTER_API_KEY", raising=False)
    with pytest.raises(ConfigError, match=key):
        load_settings(_write(tmp_path, text))


def test_missing_explicit_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.yaml")


@pytest.mark.parametrize("text", [
    'nomyo-router-api-key: "${NOMYO_TEST_UNSET_KEY}"',
    'api_keys: {"https://api.openai.com/v1": "${NOMYO_TEST_UNSET_KEY}"}',
])
def test_an_unset_variable_is_a_start_up_error_naming_it(tmp_path, monkeypatch, text):
    monkeypatch.delenv("NOMYO_TEST_UNSET_KEY", raising=False)
    with pytest.raises(ConfigError, match="NOMYO_TEST_UNSET_KEY is not set"):
        load_settings(_write(tmp_path, text + "\n"))


@pytest.mark.parametrize("text", ['nomyo-router-api-key: ""', "nomyo-router-api-key: []",
                                  'nomyo-router-api-key: "${NOMYO_TEST_EMPTY_KEY}"'])
def test_an_empty_router_key_is_an_error_not_auth_off(tmp_path, monkeypatch, text):
    monkeypatch.setenv("NOMYO_TEST_EMPTY_KEY", "")
    with pytest.raises(ConfigError, match="router key is empty"):
        load_settings(_write(tmp_path, text + "\n"))


def test_no_key_at_all_means_no_authentication(tmp_path):
    assert load_settings(_write(tmp_path, "endpoints: []\n")).router_api_keys == []
