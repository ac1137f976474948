# syntax=docker/dockerfile:1
# ghcr.io/usersignals/airflow: the official Airflow 3.3.2 image (airflowVersion in
# infra/k8s/airflow-values.yaml) with requirements/airflow.lock on top, and the main environment
# beside it: the DAGs' Spark tasks run spark-submit from the main environment's pyspark
# (settings.batch_python: <repo>/.venv/bin/python), which needs a JVM.
#   docker build -f infra/images/airflow.Dockerfile -t ghcr.io/usersignals/airflow:0.1.0 .
# Base: the exact tag apache/airflow:3.3.2-python3.11. Not pinned by digest: no published digest
# of it could be verified here; pin it (tag@sha256:...) at the first pull.

FROM spark:3.5.9-scala2.12-java17-ubuntu@sha256:eaf9bff82fbac35a67a7790c9025f317afc49c8031d0428cf6925f1596c98d52 AS spark

# The main environment, built on this image's own Python 3.11 (/usr/python), the one it runs on.
FROM apache/airflow:3.3.2-python3.11 AS main-env
# Root in this build stage only, to create /opt/usersignals; the image's last stage runs as 50000.
# hadolint ignore=DL3002
USER 0
# The image installs for its user (PIP_USER); a virtualenv takes none of that.
ENV PIP_USER=false PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/usersignals
COPY requirements/main.lock requirements/main.lock
RUN python -m venv .venv && .venv/bin/pip install -r requirements/main.lock
COPY pyproject.toml README.md ./
COPY usersignals usersignals
COPY batch batch
COPY iceberg_schemas iceberg_schemas
RUN .venv/bin/pip install --no-deps -e .

FROM apache/airflow:3.3.2-python3.11
# spark-submit's launcher is a JVM: the Temurin 17 of Spark's own image.
COPY --from=spark /opt/java/openjdk /opt/java/openjdk
COPY --from=main-env --chown=airflow:0 /opt/usersignals /opt/usersignals
ENV JAVA_HOME=/opt/java/openjdk PATH=$PATH:/opt/java/openjdk/bin PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --chown=airflow:0 requirements/airflow.lock /opt/usersignals/requirements/airflow.lock
# Airflow's environment as the lock pins it (apache-airflow==3.3.2 included, so nothing moves
# Airflow itself), and this repo in it for the DAGs' imports; data_dir (<repo>/var) writable.
RUN pip install -r /opt/usersignals/requirements/airflow.lock \
 && pip install --no-deps -e /opt/usersignals \
 && mkdir -p /opt/usersignals/var
USER 50000:0
