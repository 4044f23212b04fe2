# syntax=docker/dockerfile:1
# flipwatch image: one image for the API, the worker and the migrations (docker-compose.yml picks
# the command). torch comes from PyPI's default Linux wheels, which are CUDA builds (the CUDA
# runtime ships as nvidia-* wheels); the host only needs the NVIDIA driver and Container Toolkit.
# On a host without a GPU the same image runs the worker on CPU (docker-compose.cpu.yml).

# An exact tag: a rebuild gets the same interpreter (bump it together with requirements.lock).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# --- builder: a self-contained virtualenv at /opt/venv -----------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# Every dependency from the lock file (exact versions, sha256 hashes; written by deploy/lock.sh),
# in a layer of its own: torch and its CUDA wheels are several GB, and editing the project does not
# re-download them. --no-deps: the lock is complete, nothing unpinned sneaks in.
COPY requirements.lock /tmp/requirements.lock
RUN pip install --no-deps --require-hashes -r /tmp/requirements.lock

# Then the project itself (.dockerignore keeps tests, data and caches out of the context), built
# with the locked setuptools (no build isolation: nothing is fetched unpinned).
WORKDIR /src
COPY . .
RUN pip install --no-deps --no-build-isolation . \
 && flipwatch --help > /dev/null \
 && mkdir -p /app/migrations \
 && if [ -d migrations ]; then cp -a migrations/. /app/migrations/; fi \
 && if [ -f alembic.ini ]; then cp alembic.ini /app/; fi

# --- runtime ---------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="flipwatch" \
      org.opencontainers.image.description="Label-free accuracy monitoring for deployed image classifiers (Weighted Flips)" \
      org.opencontainers.image.licenses="Apache-2.0"

# The venv's interpreter links to the base image's /usr/local/bin/python3.11: builder and runtime
# must use the same base image.
COPY --from=builder /opt/venv /opt/venv

# Alembic's migration scripts (and alembic.ini, if the checkout has one at its root), for
# `flipwatch migrate`, at the same place relative to the working directory as in a checkout.
COPY --from=builder /app /app

RUN groupadd --system --gid 10001 flipwatch \
 && useradd --system --uid 10001 --gid flipwatch --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin flipwatch \
 && mkdir -p /data \
 && chown flipwatch:flipwatch /data

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FLIPWATCH_DATA_DIR=/data \
    HOME=/data \
    TORCH_HOME=/data/torch \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /app
# Images, weights and calibrations; a named volume in docker-compose.yml, shared by api and worker.
VOLUME ["/data"]
USER 10001:10001

# 8000: the API (and its /metrics); 9191: the worker's /metrics.
EXPOSE 8000 9191

# No HEALTHCHECK here: the same image runs the API, the worker and the one-shot migrations, each
# with its own probe, so docker-compose.yml sets one per service (api: /readyz).
ENTRYPOINT ["flipwatch"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
