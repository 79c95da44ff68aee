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
    ("cache_backend: memcached", "cache_backend"),
    ("store_url: mysql://db/x", "store_url"),
    ("redis_url: http://cache:6379", "redis_url"),
    ("cache_enabled: true\ncache_backend: redis", "cache_redis_url"),
    ("replica_lease: 0.5", "replica_lease"),
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


def test_a_list_key_takes_a_plain_comma_list_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("NOMYO_ROUTER_ENDPOINTS", "http://a:11434, http://b:11434/")
    monkeypatch.setenv("NOMYO_ROUTER_LLAMA_SERVER_ENDPOINTS", '["http://l:8080/v1"]')     # JSON still works
    monkeypatch.setenv("NOMYO_ROUTER_ALLOWED_HOSTS", "gateway.internal")
    s = load_settings(_write(tmp_path, "{}\n"))
    assert s.endpoints == ["http://a:11434", "http://b:11434"]
    assert s.llama_server_endpoints == ["http://l:8080/v1"] and s.allowed_hosts == ["gateway.internal"]


def test_a_mapping_key_from_the_environment_that_is_not_json_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("NOMYO_ROUTER_MODEL_ALIASES", "gpt-5=qwen3")
    with pytest.raises(ConfigError, match="NOMYO_ROUTER_MODEL_ALIASES must be JSON"):
        load_settings(_write(tmp_path, "{}\n"))


@pytest.mark.parametrize("typo, meant", [("max_conncurent_connections", "max_concurrent_connections"),
                                         ("endpoint", "endpoints"), ("nomyo-router-apikey", "nomyo-router-api-key")])
def test_a_misspelt_key_gets_a_did_you_mean(tmp_path, typo, meant):
    with pytest.raises(ConfigError, match=f"did you mean '{meant}'"):
        load_settings(_write(tmp_path, f"{typo}: 1\n"))


def test_check_config_prints_the_effective_config_with_secrets_masked(tmp_path):
    import subprocess
    import sys

    import yaml
    from pathlib import Path
    path = _write(tmp_path, "endpoints: [http://a:11434]\nnomyo-router-api-key: router-secret-1234\n"
                            "admin_api_key: admin-secret-5678\napi_keys: {http://a:11434: upstream-secret-9012}\n"
                            "tenants: {team: {keys: [tenant-secret-3456]}}\n")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "serve.py", "--config", str(path), "--check-config"], cwd=root,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for secret in ("router-secret", "admin-secret", "upstream-secret", "tenant-secret"):
        assert secret not in done.stdout
    shown = yaml.safe_load(done.stdout)
    assert shown["endpoints"] == ["http://a:11434"] and shown["max_body_bytes"] == 32 * 1024 * 1024
    assert shown["router_api_key"] == "***1234" and shown["tenants"]["team"]["keys"] == ["***3456"]
    bad = _write(tmp_path, "max_body_bytes: 1\n")
    refused = subprocess.run([sys.executable, "serve.py", "--config", str(bad), "--check-config"], cwd=root,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "max_body_bytes" in refused.stderr and not refused.stdout
