# ddp-relay's image, in three targets:
#
#   production (the default)  the ddp-relay package and its pinned dependencies, nothing else:
#                             build FROM it and add your Django project (see below).
#   example                   production plus the example project (example/): the demo and
#                             docker-compose.yml run it.
#   builder                   where the wheel is built and installed; not shipped.
#   demo-assets               npm ci of the demo page's Meteor client bundles (for example).
#
#   docker build -t ddp-relay:0.1.0 .                      # production
#   docker build --target example -t ddp-relay-example .   # the demo
#
# Your project:   FROM ddp-relay:0.1.0
#                 COPY mysite /app/mysite
#                 ENV PYTHONPATH=/app DJANGO_SETTINGS_MODULE=mysite.settings
# then run `ddp-relay migrate` once, `ddp-relay serve` (the relays; RELAY_WSGI_APP empty:
# DDP only) and `ddp-relay web` (RELAY_WSGI_APP=mysite.wsgi:application: the web tier).
#
# The base is pinned by digest (python:3.11-slim-bookworm; update the digest and the
# constraints together). Dependencies are installed from deploy/constraints.txt, the pinned
# runtime closure that `make lock` regenerates and tests/deploy/test_dockerfile.py keeps
# honest against pyproject.toml.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91
# Only for the example's demo page: npm installs its Meteor client bundles (never in production).
ARG NODE_IMAGE=node:20-bookworm-slim@sha256:2cf067cfed83d5ea958367df9f966191a942351a2df77d6f0193e162b5febfc0

FROM ${PYTHON_IMAGE} AS builder

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# The sources the wheel is built from, and the lock (.dockerignore keeps the rest out).
COPY pyproject.toml README.md LICENSE ./
COPY relay ./relay
COPY coordinator ./coordinator
COPY django_app ./django_app
COPY deploy/constraints.txt ./constraints.txt

# The wheel first, then a virtualenv with it and its dependencies exactly as locked:
# binary wheels only (the slim base has no compiler), except psycogreen, which PyPI has as
# a pure-Python sdist only (it builds without a compiler).
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
    && python -m venv /opt/ddp-relay \
    && /opt/ddp-relay/bin/pip install --only-binary=:all: --no-binary=psycogreen \
        --constraint constraints.txt \
        "$(ls /wheels/ddp_relay-*.whl)[zookeeper]" \
    && /opt/ddp-relay/bin/pip check


FROM ${PYTHON_IMAGE} AS production

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="ddp-relay" \
      org.opencontainers.image.description="Meteor's DDP server for Django and PostgreSQL, at cluster scale: relays (ddp-relay serve) and the web tier (ddp-relay web)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.authors="the ddp-relay authors" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11-slim-bookworm"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/ddp-relay/bin:$PATH \
    HOST=0.0.0.0 \
    PORT=8000 \
    RELAY_INTERNAL_PORT=9000 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus-multiproc

COPY --from=builder /opt/ddp-relay /opt/ddp-relay

RUN groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid relay --no-create-home --home-dir /app relay \
    && mkdir -p /app /tmp/prometheus-multiproc \
    && chown 10001:10001 /app /tmp/prometheus-multiproc

WORKDIR /app
# Numeric, so Kubernetes' runAsNonRoot can check it.
USER 10001:10001
# 8000: DDP (and RELAY_WSGI_APP, or the web tier); 9000: /metrics and the probes.
EXPOSE 8000 9000

# Liveness only (a stuck worker loop), on the internal port, or on the public one when
# RELAY_INTERNAL_PORT=0. The web tier (`ddp-relay web`) answers /livez on its one port:
# run it with RELAY_INTERNAL_PORT=0, or give it a healthcheck of its own (compose does).
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; internal = int(os.environ.get('RELAY_INTERNAL_PORT') or 0); port = internal or int(os.environ.get('PORT') or 8000); urllib.request.urlopen(f'http://127.0.0.1:{port}/livez', timeout=2)"]

ENTRYPOINT ["ddp-relay"]
CMD ["serve"]


FROM ${NODE_IMAGE} AS demo-assets

# The demo page's Meteor client bundles, exactly as example/demo/package-lock.json pins them
# (.dockerignore keeps any local node_modules out of the context).
WORKDIR /demo
COPY example/demo/package.json example/demo/package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund


FROM production AS example

COPY example /app/example
COPY --from=demo-assets /demo/node_modules /app/example/demo/node_modules
ENV PYTHONPATH=/app/example \
    DJANGO_SETTINGS_MODULE=example.settings \
    RELAY_WSGI_APP=example.wsgi:application


# The default target (last): the production image, without the example.
FROM production AS release
