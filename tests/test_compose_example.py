"""The scaled-out Docker Compose example (docs/compose): the settings that would break it if
wrong. No Docker needed: compose.yaml is read as YAML, nginx.conf with a small parser, and the
gateway's own configuration (``config.Settings``) says which variables and values it takes."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from config import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
HERE = REPO / "docs" / "compose"
GATEWAYS = ("nomyo-router-1", "nomyo-router-2", "nomyo-router-3")
PREFIX = "NOMYO_ROUTER_"
#: Keys the example relies on; each must be a field of Settings.
KEYS = ("store_url", "redis_url", "cache_backend", "reasoning_encryption_key", "allowed_hosts",
        "endpoints", "cache_enabled")


# compose.yaml ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((HERE / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


def environment(service: dict) -> dict[str, str]:
    """A service's environment as a mapping (compose takes a mapping or ``KEY=value`` lines)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(line.split("=", 1) for line in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def shared_env(services: dict) -> dict[str, str]:
    return environment(services[GATEWAYS[0]])


def dockerfile_port() -> int:
    """The port the gateway listens on: ``--port`` of the Dockerfile's CMD."""
    cmd = next(line for line in (REPO / "Dockerfile").read_text().splitlines() if line.startswith("CMD "))
    argv = json.loads(cmd[4:])
    return int(argv[argv.index("--port") + 1])


def gateway_port(service: dict) -> int:
    command = service.get("command")
    if command:
        argv = command.split() if isinstance(command, str) else command
        if "--port" in argv:
            return int(argv[argv.index("--port") + 1])
    return dockerfile_port()


def seconds(duration: str | int | float) -> float:
    """A compose or nginx duration (``30s``, ``1m30s``, ``1h``, ``3600``) in seconds."""
    if isinstance(duration, (int, float)):
        return float(duration)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)?", duration.strip())
    assert parts and "".join(n + (u or "") for n, u in parts) == duration.strip(), duration
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "": 1}
    return sum(float(n) * scale[u or ""] for n, u in parts)


def image_settings(env: dict[str, str], monkeypatch) -> Settings:
    """The settings a replica runs with: the image's config.yaml under this environment."""
    for name in list(os.environ):
        if name.startswith(PREFIX):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings(REPO / "config.yaml")


def test_three_gateway_services_built_from_the_repository_root(services):
    built = sorted(name for name, service in services.items() if "build" in service)
    assert built == list(GATEWAYS)
    for name in GATEWAYS:
        build = services[name]["build"]
        context = build if isinstance(build, str) else build["context"]
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        assert (HERE / context).resolve() == REPO, name
        assert dockerfile == "Dockerfile" and (REPO / "Dockerfile").is_file()


def test_replicas_share_one_environment(services):
    envs = [environment(services[name]) for name in GATEWAYS]
    assert envs[0] == envs[1] == envs[2]
    for name in ("STORE_URL", "REDIS_URL", "API_KEY", "REASONING_ENCRYPTION_KEY", "ENDPOINTS",
                 "CACHE_ENABLED", "CACHE_BACKEND", "ALLOWED_HOSTS"):
        assert envs[0].get(PREFIX + name), f"{PREFIX}{name} is missing or empty"


def test_store_url_is_the_postgres_service(services):
    url = urlsplit(shared_env(services)[PREFIX + "STORE_URL"])
    assert url.scheme in ("postgresql", "postgres")
    assert url.hostname in services and services[url.hostname]["image"].startswith("postgres:")
    pg = environment(services[url.hostname])
    assert (url.username, url.password) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"])
    assert url.path.lstrip("/") == pg.get("POSTGRES_DB", pg["POSTGRES_USER"])
    assert (url.port or 5432) == 5432


def test_redis_url_is_the_redis_service(services):
    url = urlsplit(shared_env(services)[PREFIX + "REDIS_URL"])
    assert url.scheme == "redis"
    assert url.hostname in services and services[url.hostname]["image"].startswith("redis:")
    assert (url.port or 6379) == 6379


def test_gateways_wait_for_healthy_postgres_and_redis(services):
    for name in GATEWAYS:
        depends = services[name].get("depends_on")
        assert isinstance(depends, dict), f"{name}: depends_on needs the long form (condition)"
        for needed in ("postgres", "redis"):
            assert depends.get(needed, {}).get("condition") == "service_healthy", (name, needed)
    # service_healthy waits forever on a service without a healthcheck
    pg_test = " ".join(services["postgres"]["healthcheck"]["test"])
    assert "pg_isready" in pg_test and "nomyo" in pg_test
    assert "redis-cli ping" in " ".join(services["redis"]["healthcheck"]["test"])


def test_every_variable_names_a_configuration_key(services):
    alias = Settings.model_fields["router_api_key"].validation_alias
    for name in GATEWAYS:
        for variable in environment(services[name]):
            assert variable.startswith(PREFIX), f"{name}: {variable} is not a gateway variable"
            if variable == PREFIX + "API_KEY":
                assert variable in alias.choices
            else:
                key = variable[len(PREFIX):].lower()
                assert key in Settings.model_fields, f"{variable}: no configuration key {key!r}"


def test_the_keys_the_example_relies_on_exist():
    for key in KEYS:
        assert key in Settings.model_fields, key
    assert PREFIX + "API_KEY" in Settings.model_fields["router_api_key"].validation_alias.choices


def test_the_environment_gives_the_settings_meant(services, monkeypatch):
    env = shared_env(services)
    settings = image_settings(env, monkeypatch)
    assert settings.store_url == env[PREFIX + "STORE_URL"]
    assert settings.redis_url == env[PREFIX + "REDIS_URL"]
    assert settings.router_api_keys == [env[PREFIX + "API_KEY"]]
    assert settings.reasoning_encryption_key == env[PREFIX + "REASONING_ENCRYPTION_KEY"]
    assert settings.cache_enabled is True and settings.cache_backend == "redis"
    assert settings.allowed_hosts == ["*"]
    assert settings.endpoints == ["http://host.docker.internal:11434"]


def test_the_host_is_reachable_as_host_docker_internal(services):
    for name in GATEWAYS:
        if "host.docker.internal" in environment(services[name])[PREFIX + "ENDPOINTS"]:
            hosts = services[name].get("extra_hosts") or []
            if isinstance(hosts, dict):
                hosts = [f"{host}:{address}" for host, address in hosts.items()]
            assert "host.docker.internal:host-gateway" in hosts, name


def test_replicas_stop_after_their_shutdown_grace(services, monkeypatch):
    from serve import uvicorn_config
    settings = image_settings(shared_env(services), monkeypatch)
    # SIGTERM: running responses get shutdown_grace, the server a little more to close
    needed = uvicorn_config(settings, "0.0.0.0", dockerfile_port()).timeout_graceful_shutdown
    assert needed >= settings.shutdown_grace
    for name in GATEWAYS:
        assert seconds(services[name].get("stop_grace_period", "10s")) > needed, name
        assert services[name].get("restart") == "unless-stopped", name


def test_gateway_healthcheck_asks_whether_the_replica_is_up(services):
    for name in GATEWAYS:
        test = services[name]["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], name
        compile(test[3], f"{name} healthcheck", "exec")         # valid Python once unquoted
        assert f"http://127.0.0.1:{gateway_port(services[name])}/health/live" in test[3], name


def test_no_variable_is_interpolated_by_compose(compose):
    def strings(node):
        if isinstance(node, dict):
            for key, value in node.items():
                yield str(key)
                yield from strings(value)
        elif isinstance(node, list):
            for value in node:
                yield from strings(value)
        elif isinstance(node, str):
            yield node
    # compose replaces $NAME and ${NAME} by the caller's environment; $$ is a plain $
    assert [s for s in strings(compose) if "$" in s.replace("$$", "")] == []


# nginx.conf ------------------------------------------------------------------------------------

Directive = tuple[str, list[str], "list | None"]


def parse_nginx(text: str) -> list[Directive]:
    """nginx.conf as a tree of ``(name, args, children)``; children is None for a simple
    directive. Raises AssertionError for unbalanced braces or a directive without ``;``."""
    tokens = re.findall(r"'[^']*'|\"[^\"]*\"|#[^\n]*|[{};]|[^\s{};'\"#]+", text)
    tokens = [t for t in tokens if not t.startswith("#")]

    def block(i: int, top: bool) -> tuple[list[Directive], int]:
        out: list[Directive] = []
        words: list[str] = []
        while i < len(tokens):
            token = tokens[i]
            i += 1
            if token == ";":
                assert words, "an empty directive"
                out.append((words[0], words[1:], None))
                words = []
            elif token == "{":
                assert words, "a block without a name"
                children, i = block(i, False)
                out.append((words[0], words[1:], children))
                words = []
            elif token == "}":
                assert not top, "a } too many"
                assert not words, f"{words} lacks its ;"
                return out, i
            else:
                words.append(token[1:-1] if token[0] in "'\"" else token)
        assert top, "a { is never closed"
        assert not words, f"{words} lacks its ;"
        return out, i

    return block(0, True)[0]


def directives(tree: list[Directive], name: str) -> list[Directive]:
    return [d for d in tree if d[0] == name]


def one(tree: list[Directive], name: str) -> Directive:
    found = directives(tree, name)
    assert len(found) == 1, f"{len(found)} {name} directives"
    return found[0]


@pytest.fixture(scope="module")
def nginx() -> list[Directive]:
    return parse_nginx((HERE / "nginx.conf").read_text())


@pytest.fixture(scope="module")
def http(nginx) -> list[Directive]:
    return one(nginx, "http")[2]


@pytest.fixture(scope="module")
def location(http) -> list[Directive]:
    server = one(http, "server")[2]
    return next(d[2] for d in directives(server, "location") if d[1] == ["/"])


def effective(http, location, name: str) -> list[str] | None:
    """The arguments of ``name`` as the location sees them (nginx inherits from server, http)."""
    server = one(http, "server")[2]
    for level in (location, server, http):
        found = directives(level, name)
        if found:
            return found[-1][1]
    return None


def test_upstream_lists_exactly_the_three_replicas(http, services):
    name, args, upstream = one(http, "upstream")
    servers = [d[1][0] for d in directives(upstream, "server")]
    assert sorted(servers) == sorted(f"{g}:{gateway_port(services[g])}" for g in GATEWAYS)
    assert directives(upstream, "least_conn")
    if any("resolve" in d[1] for d in directives(upstream, "server")):
        # looking names up while running needs shared memory and a resolver, or nginx refuses to start
        assert directives(upstream, "zone")
        assert directives(upstream, "resolver") or directives(http, "resolver")


def test_requests_go_to_the_upstream(http, location):
    upstream = one(http, "upstream")[1][0]
    assert one(location, "proxy_pass")[1] == [f"http://{upstream}"]


def test_websocket_upgrade_is_passed_on(http, location):
    maps = [d for d in directives(http, "map") if d[1] == ["$http_upgrade", "$connection_upgrade"]]
    assert len(maps) == 1
    assert ("default", ["upgrade"], None) in maps[0][2]
    assert effective(http, location, "proxy_http_version") == ["1.1"]
    headers = {d[1][0].lower(): d[1][1:] for d in directives(location, "proxy_set_header")}
    assert headers.get("upgrade") == ["$http_upgrade"]
    assert headers.get("connection") == ["$connection_upgrade"]
    assert headers.get("host") in (["$host"], ["$http_host"])
    assert headers.get("x-forwarded-for") == ["$proxy_add_x_forwarded_for"]


def test_streams_are_not_held_back(http, location, services, monkeypatch):
    assert effective(http, location, "proxy_buffering") == ["off"]
    assert effective(http, location, "proxy_cache") in (None, ["off"])
    settings = image_settings(shared_env(services), monkeypatch)
    # a backend may stay silent request_timeout seconds; nginx must wait at least as long
    for name in ("proxy_read_timeout", "proxy_send_timeout"):
        value = effective(http, location, name)
        assert value and seconds(value[0]) >= settings.request_timeout, name


def test_body_limit_is_the_gateways(http, location, services, monkeypatch):
    value = effective(http, location, "client_max_body_size")
    assert value, "nginx's default (1m) would refuse bodies the gateway takes"
    number, unit = re.fullmatch(r"(\d+)([kKmMgG]?)", value[0]).groups()
    size = int(number) * {"": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[unit.lower()]
    assert size == image_settings(shared_env(services), monkeypatch).max_body_bytes


def test_a_request_a_replica_received_is_never_resent(http, location):
    value = effective(http, location, "proxy_next_upstream")
    assert value and "error" in value
    assert "non_idempotent" not in value and "off" not in value


def test_nginx_publishes_its_port_and_mounts_this_config(http, services):
    nginx = services["nginx"]
    assert nginx["image"].startswith("nginx:")
    listen = int(one(one(http, "server")[2], "listen")[1][0])
    published = [str(p) for p in nginx.get("ports") or []]
    assert f"{dockerfile_port()}:{listen}" in published
    mounts = [str(v).split(":") for v in nginx.get("volumes") or []]
    assert any((HERE / m[0]).resolve() == HERE / "nginx.conf" and m[1] == "/etc/nginx/nginx.conf"
               for m in mounts)
    depends = nginx.get("depends_on") or []
    assert set(GATEWAYS) <= set(depends)
