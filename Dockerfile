# EVR on embedded defaults (SQLite, and the encrypted file evidence store under /data;
# the signing and master keys are generated under /data/keys at first start: back
# them up, or mount your own and name them in /data/evr.toml).
# WebRTC media uses UDP on ephemeral ports: run with host networking
# (docker run --network host ...) or configure a TURN server (EVR_ICE_SERVERS).
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server server
COPY incidents incidents
COPY recording recording
COPY retention retention
COPY statements statements
COPY uploads uploads
COPY web web
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm
# libmagic1: uploads' content types are detected from their bytes (python-magic).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libmagic1 \
 && rm -rf /var/lib/apt/lists/*
RUN useradd --system --uid 10001 --home-dir /data evr \
 && mkdir -p /data && chown evr:evr /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER evr
WORKDIR /data
ENV EVR_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz')"
CMD ["evr", "serve", "--host", "0.0.0.0", "--port", "8080", "--data", "/data"]
