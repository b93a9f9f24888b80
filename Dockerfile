# relay: PostgreSQL row changes to browsers over Server-Sent Events.
#   docker build -t relay .
#   docker run -e RELAY_DATABASE_URL=postgresql://... -e RELAY_JWT_SECRET=... -p 8080:8080 relay

# --- build: wheels for relay and its dependencies (compilers stay here) ---
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY relay ./relay
COPY sql ./sql
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# --- run: only the installed wheels, a non-root user, a healthcheck ---
# (DL3013: relay and its dependencies come from /wheels only, pinned by the build stage)
FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    RELAY_HOST=0.0.0.0 \
    RELAY_PORT=8080 \
    RELAY_DATA_DIR=/data \
    RELAY_LOG_FORMAT=json
COPY --from=build /wheels /wheels
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-index --find-links=/wheels relay \
 && rm -rf /wheels \
 && useradd --system --uid 10001 --home-dir /data --create-home relay
USER 10001
WORKDIR /data
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["relay"]
# Safe by default: `relay serve` on 0.0.0.0 without RELAY_JWT_SECRET/RELAY_JWKS_URL exits
# with a one-line error; it never serves unauthenticated or hands out tokens.
CMD ["serve"]
