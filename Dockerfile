# One Cloud Hall node. Scaled deployments run N of these (one per core) behind a reverse
# proxy with sticky sessions, sharing PostgreSQL, Redis and the recordings store.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    CLOUDHALL_HOST=0.0.0.0 CLOUDHALL_PORT=8080 CLOUDHALL_DATA_DIR=/data

RUN useradd --system --home /app --shell /usr/sbin/nologin cloudhall \
 && mkdir -p /data && chown cloudhall /data
WORKDIR /app
COPY pyproject.toml README.md ./
COPY cloudhall ./cloudhall
COPY signaling ./signaling
COPY media ./media
COPY recordings ./recordings
COPY agent_console ./agent_console
COPY web ./web
RUN pip install --no-cache-dir .

USER cloudhall
VOLUME ["/data"]
EXPOSE 8080
# Media uses UDP ports chosen by the kernel; publish a range or use host networking.
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"
CMD ["sh", "-c", "cloudhall db upgrade && exec cloudhall serve"]
