# syntax=docker/dockerfile:1
# ghcr.io/usersignals/batch: Spark's driver and executor pods for the batch jobs (spark-submit
# batch/submit.py from Airflow; infra/k8s/spark-defaults.conf). The Spark 3.5.9 distribution and
# its Kubernetes entrypoint come from the official spark image of the pyspark version in
# requirements/main.lock; Python is the main environment's 3.11 (that image ships Ubuntu's 3.10,
# which the lock does not support). The catalog's jars are infra/pom.xml's `spark` profile from
# Maven Central, checked against infra/jars.sha256, at <repo>/build/jars/spark where
# usersignals.lake.spark_jars() looks for them.
#   docker build -f infra/images/batch.Dockerfile -t ghcr.io/usersignals/batch:0.1.0 .

FROM maven:3.9.16-eclipse-temurin-17-noble@sha256:b1420375ab2a5f3ef6e0f355367bff4096e23bdea2191af2b95f9f1c71984690 AS jars
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY infra/pom.xml infra/jars.sha256 infra/
# As infra/jars.sh: Maven checks the repository's checksums (-C), then the copied set must be
# exactly the pinned one (no jar more, none less, none changed).
RUN mvn -q -B -C -f infra/pom.xml -P spark dependency:copy-dependencies -DoutputDirectory=/src/build/jars/spark
WORKDIR /src/build/jars
RUN diff <(find . -name '*.jar' -exec sha256sum {} + | sed 's| \./| |' | LC_ALL=C sort) \
         <(grep ' spark/' /src/infra/jars.sha256 | LC_ALL=C sort)

FROM python:3.11.16-slim-bookworm@sha256:c425d915a89a6dcd3183b1797ad9bd8878caff5a417f6371c8df93c8ea8b727f AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/usersignals
COPY requirements/main.lock requirements/main.lock
RUN python -m venv .venv && .venv/bin/pip install -r requirements/main.lock
COPY pyproject.toml README.md ./
COPY usersignals usersignals
COPY batch batch
RUN .venv/bin/pip install --no-deps -e .

FROM spark:3.5.9-scala2.12-java17-ubuntu@sha256:eaf9bff82fbac35a67a7790c9025f317afc49c8031d0428cf6925f1596c98d52 AS spark

FROM python:3.11.16-slim-bookworm@sha256:c425d915a89a6dcd3183b1797ad9bd8878caff5a417f6371c8df93c8ea8b727f
# Spark's entrypoint runs the JVM under tini and looks users up with `id`; procps for decom.sh.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini procps \
 && rm -rf /var/lib/apt/lists/*
# Spark's own uid (185), as the official image, so its pod templates and docs apply unchanged.
RUN groupadd --system --gid 185 spark \
 && useradd --system --uid 185 --gid spark --home-dir /opt/spark/work-dir --no-create-home spark
COPY --from=spark /opt/java/openjdk /opt/java/openjdk
COPY --from=spark /opt/spark /opt/spark
COPY --from=spark /opt/entrypoint.sh /opt/decom.sh /opt/
COPY --from=builder /opt/usersignals /opt/usersignals
COPY --from=jars /src/build/jars/spark /opt/usersignals/build/jars/spark
RUN mkdir -p /opt/usersignals/var && chown -R spark:spark /opt/usersignals/var /opt/spark/work-dir
ENV JAVA_HOME=/opt/java/openjdk SPARK_HOME=/opt/spark \
    PATH=/opt/usersignals/.venv/bin:/opt/java/openjdk/bin:/opt/spark/bin:$PATH \
    PYSPARK_PYTHON=/opt/usersignals/.venv/bin/python PYSPARK_DRIVER_PYTHON=/opt/usersignals/.venv/bin/python \
    PYTHONPATH=/opt/usersignals PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /opt/spark/work-dir
USER 185:185
ENTRYPOINT ["/opt/entrypoint.sh"]
