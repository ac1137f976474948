# syntax=docker/dockerfile:1
# ghcr.io/usersignals/main: the services' environment (requirements/api.lock) and the repo, laid out as
# `make install` lays them (/opt/usersignals/.venv beside the code), so settings' defaults that
# derive from the repo root (the registry, data_dir) hold. Runs the serving API and the trimmer
# (infra/k8s/services.yaml) and the lake's migration (python -m iceberg_schemas).
#   docker build -f infra/images/main.Dockerfile -t ghcr.io/usersignals/main:0.1.0 .
# Base: python 3.11 (pyproject: >=3.11,<3.12), exact patch on Debian 12, pinned by digest.

# The serving API's native module (serving/native, Rust): an abi3 wheel built by maturin, as
# `make install` builds it (crates from its Cargo.lock, --locked). Tag only: no digest of the
# Rust image could be verified here (as for apache/airflow, tests/unit/test_images.py).
FROM rust:1.95.0-slim-bookworm AS native
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY serving/native .
RUN python3 -m venv /maturin \
 && /maturin/bin/pip install --no-cache-dir maturin==1.16.0 \
 && /maturin/bin/maturin build --release --locked --out /wheels

FROM python:3.11.16-slim-bookworm@sha256:c425d915a89a6dcd3183b1797ad9bd8878caff5a417f6371c8df93c8ea8b727f AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/usersignals
# The lock first: the dependency layer is rebuilt only when the lock changes. api.lock is
# main.lock's pins of what the services import (requirements/api.in): no test or lint tools.
COPY requirements/api.lock requirements/api.lock
RUN python -m venv .venv && .venv/bin/pip install -r requirements/api.lock
COPY --from=native /wheels /wheels
RUN .venv/bin/pip install /wheels/*.whl
COPY pyproject.toml README.md ./
COPY usersignals usersignals
COPY serving serving
COPY batch batch
COPY iceberg_schemas iceberg_schemas
COPY analytics analytics
# Editable, as infra/install.sh installs it: the package resolves to this tree, which the runtime
# stage copies to the same path.
RUN .venv/bin/pip install --no-deps -e .

FROM python:3.11.16-slim-bookworm@sha256:c425d915a89a6dcd3183b1797ad9bd8878caff5a417f6371c8df93c8ea8b727f
RUN groupadd --system --gid 10001 usersignals \
 && useradd --system --uid 10001 --gid usersignals --home-dir /opt/usersignals --no-create-home usersignals
COPY --from=builder /opt/usersignals /opt/usersignals
# data_dir (settings: <repo>/var) is the only place the services write.
RUN mkdir /opt/usersignals/var && chown usersignals:usersignals /opt/usersignals/var
ENV PATH=/opt/usersignals/.venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /opt/usersignals
USER 10001:10001
EXPOSE 8000
CMD ["python", "-m", "serving"]
