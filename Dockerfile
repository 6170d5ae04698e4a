# syntax=docker/dockerfile:1
# Multi-stage: dependencies in a builder venv (cached apart from the source), a slim non-root runtime,
# tini as PID 1 so SIGTERM reaches `sluice serve` and it drains before exiting.

FROM python:3.11-slim AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
# Dependency layer first: it only changes when pyproject.toml does.
COPY pyproject.toml README.md ./
RUN mkdir -p gateway tenants quota cache \
    && touch gateway/__init__.py tenants/__init__.py quota/__init__.py cache/__init__.py \
    && pip install ".[embedded]" \
    && pip uninstall -y sluice-gateway
COPY gateway ./gateway
COPY tenants ./tenants
COPY quota ./quota
COPY cache ./cache
COPY alembic ./alembic
RUN pip install --no-deps -e .

FROM python:3.11-slim AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends tini curl && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin sluice
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder --chown=sluice:sluice /app /app
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 SLUICE_DATA_DIR=/data
RUN mkdir -p /data && chown sluice:sluice /data
USER sluice
WORKDIR /app
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["sluice", "serve", "--host", "0.0.0.0", "--port", "8080"]
