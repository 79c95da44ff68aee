# NOMYO Router as a sidecar container: docker build -t nomyo-router .
FROM python:3.11-slim

WORKDIR /app
RUN useradd --create-home --uid 10001 nomyo

# Dependencies first (the same `pip install .` as the README and CI use).
COPY pyproject.toml ./
RUN pip install --no-cache-dir . && rm -rf build ./*.egg-info
# The semantic cache (cache_similarity below 1) needs its encoder: docker build --build-arg
# SEMANTIC_CACHE=true adds the "semantic" extra and the model (about 100 MB; no torch).
ARG SEMANTIC_CACHE=false
COPY scripts/semantic-model.sh ./scripts/
RUN if [ "$SEMANTIC_CACHE" = "true" ]; then pip install --no-cache-dir ".[semantic]" && rm -rf build ./*.egg-info \
    && PIP_NO_CACHE_DIR=1 bash scripts/semantic-model.sh; fi

COPY serve.py logs.py router.py preflight.py chat_client.py reasoning_seal.py config.py errors.py metrics.py backends.py slots.py store.py db.py db_conversations.py db_postgres.py db_postgres_conversations.py db_token_stats.py db_postgres_token_stats.py cache.py cache_semantic.py embedding.py config.yaml ./
COPY api ./api
COPY engine ./engine
COPY requests ./requests

RUN mkdir -p /app/data && chown nomyo:nomyo /app/data
USER nomyo

# Every file the gateway writes lives on the data volume (the store, its lock and reasoning key, the cache).
ENV NOMYO_ROUTER_CONFIG_PATH=/app/config.yaml \
    NOMYO_ROUTER_DB_PATH=/app/data/nomyo-router.db \
    NOMYO_ROUTER_CACHE_DB_PATH=/app/data/cache.db
VOLUME ["/app/data"]
EXPOSE 12434

HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:12434/health/live', timeout=4)"

# serve.py: one summary line per request, SIGTERM gives running responses shutdown_grace (10 s).
STOPSIGNAL SIGTERM
CMD ["python", "serve.py", "--host", "0.0.0.0", "--port", "12434"]
