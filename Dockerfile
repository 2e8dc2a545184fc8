# The DeepGrad training service (API + embedded GPU worker). Run it with `docker compose up -d`;
# docs/deployment.md has the steps, the token and the data sets.
#
# torch and torchvision come from the base image (a CUDA build). pip must not swap them for another
# build while resolving ".[server]" (torch>=2.4, torchvision>=0.19): the versions installed in the image
# are written to a constraints file, so pip keeps them, and the build fails loudly rather than
# downloading a second torch if a dependency ever asks for a different one.
ARG BASE_IMAGE=pytorch/pytorch:2.11.0-cuda12.8-cudnn9-runtime
FROM ${BASE_IMAGE}
# The package's extras: "server" on one host; "server,ray" for a cluster's head and nodes (docker-compose.yml's
# cluster profile builds it so).
ARG EXTRAS=server

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /app
COPY pyproject.toml README.md ./
COPY deepgrad_core/ deepgrad_core/
COPY server/ server/
COPY client/ client/
RUN pip list --format=freeze | grep -E '^(torch|torchvision)==' > /tmp/torch-constraints.txt \
    && pip install --no-cache-dir --constraint /tmp/torch-constraints.txt ".[${EXTRAS}]" \
    && rm /tmp/torch-constraints.txt

# An unprivileged user owns the data volume (database, checkpoints, token, data sets); a fresh named
# volume copies this ownership from the image.
RUN groupadd --gid 10001 deepgrad \
    && useradd --create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin deepgrad \
    && mkdir -p /data/datasets \
    && chown -R deepgrad:deepgrad /data
VOLUME /data

# 0.0.0.0 so that the published port reaches the server; the server allows a non-loopback bind only with
# auth on (the default). docker-compose.yml publishes the port on the host's 127.0.0.1 only.
ENV DEEPGRAD_HOST=0.0.0.0 \
    DEEPGRAD_PORT=8000 \
    DEEPGRAD_DATA_DIR=/data \
    DEEPGRAD_DATA_ROOT=/data/datasets

USER 10001:10001  # deepgrad, by number so that "must run as non-root" checks can verify it
EXPOSE 8000
# No curl in the image: Python's urllib raises (exit 1) on a refused connection or a non-2xx answer.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]
CMD ["deepgrad-server"]
