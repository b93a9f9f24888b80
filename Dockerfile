# relay: PostgreSQL row changes to browsers over Server-Sent Events.
# docker build -t relay . && docker run -e RELAY_DATABASE_URL=... -e RELAY_JWT_SECRET=... -p 8080:8080 relay
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    RELAY_HOST=0.0.0.0 RELAY_PORT=8080 RELAY_DATA_DIR=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY relay ./relay
COPY sql ./sql
RUN pip install --no-cache-dir . \
 && useradd --system --uid 10001 --home-dir /data --create-home relay

USER relay
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz').status == 200 else 1)"
ENTRYPOINT ["relay"]
CMD ["serve"]
