# A relay image: the ddp-relay package plus the example Django project.
#   docker build -t ddp-relay:0.1.0 .
#   docker run -p 8000:8000 -e DATABASE_URL=postgresql://user:pass@host:5432/db ddp-relay:0.1.0
# Migrations: the same image with `python example/manage.py migrate --noinput`.
# Your own project: build FROM this image (or copy these lines), replace example/ and set
# DJANGO_SETTINGS_MODULE and RELAY_WSGI_APP.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The package first (its dependencies are the slow, rarely changing layer), built from a
# scratch copy of the sources. README.md*: the build works with or without a README.
COPY pyproject.toml README.md* /src/
COPY relay /src/relay
COPY coordinator /src/coordinator
COPY django_app /src/django_app
# gunicorn[gevent]: the gevent worker needs `packaging`, which plain `gunicorn` does not pull.
RUN pip install /src "gunicorn[gevent]" && rm -rf /src

COPY example ./example

RUN groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid relay --no-create-home --home-dir /app relay

# HOST=0.0.0.0: reachable from outside the container (relay.server.gunicorn_conf binds
# 127.0.0.1 by default). PYTHONPATH: the example project's packages (example, bookstore).
# PROMETHEUS_MULTIPROC_DIR: aggregated metrics across gunicorn workers; the Helm chart and
# docker-compose.yml put it on a tmpfs/emptyDir.
ENV HOST=0.0.0.0 \
    PORT=8000 \
    PYTHONPATH=/app/example \
    DJANGO_SETTINGS_MODULE=example.settings \
    RELAY_WSGI_APP=example.wsgi:application \
    PROMETHEUS_MULTIPROC_DIR=/tmp/prometheus-multiproc

RUN mkdir -p /tmp/prometheus-multiproc && chown relay:relay /tmp/prometheus-multiproc

# Numeric, so Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 8000

CMD ["gunicorn", "-c", "python:relay.server.gunicorn_conf", "relay.server.app:create_app()"]
