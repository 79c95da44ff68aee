#!/usr/bin/env bash
# Make sure the PostgreSQL and Redis the tests use answer on 127.0.0.1 (5432, 6379): start
# one that is down with the machine's own packages, or stop with a message that says what
# is missing. A server named by NOMYO_TEST_POSTGRES / NOMYO_TEST_REDIS is taken as it is.
set -euo pipefail

up() {  # host port
    timeout 1 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null
}

wait_up() {  # name host port
    for _ in $(seq 1 60); do
        up "$2" "$3" && return 0
        sleep 0.5
    done
    echo "[services] $1 does not answer on $2:$3" >&2
    return 1
}

if [ -z "${NOMYO_TEST_POSTGRES:-}" ] && ! up 127.0.0.1 5432; then
    echo "[services] PostgreSQL is down on 127.0.0.1:5432: starting it" >&2
    if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start >&2 || true
    fi
    wait_up PostgreSQL 127.0.0.1 5432 || {
        echo "[services] the PostgreSQL tests need a server on 127.0.0.1:5432 (trust auth, database 'test')," \
             "or NOMYO_TEST_POSTGRES=postgresql://..." >&2
        exit 1
    }
fi

if [ -z "${NOMYO_TEST_REDIS:-}" ] && ! up 127.0.0.1 6379; then
    echo "[services] Redis is down on 127.0.0.1:6379: starting it" >&2
    if command -v redis-server >/dev/null; then
        mkdir -p /tmp/nomyo-redis
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
            --dir /tmp/nomyo-redis --logfile /tmp/nomyo-redis/redis.log >&2 || true
    fi
    wait_up Redis 127.0.0.1 6379 || {
        echo "[services] the Redis tests need a server on 127.0.0.1:6379, or NOMYO_TEST_REDIS=redis://..." >&2
        exit 1
    }
fi
