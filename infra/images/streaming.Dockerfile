# syntax=docker/dockerfile:1
# ghcr.io/usersignals/streaming: the indexing job (streaming/job.py) under the Flink Kubernetes
# Operator (infra/k8s/flink-indexer.yaml, flinkVersion v2_1). Flink 2.1.3 is the official image of
# the PyFlink pinned in requirements/streaming.lock (apache-flink==2.1.3); the streaming
# environment, the repo, the connector jars of infra/pom.xml's `flink` profile (checked against
# infra/jars.sha256) and the helper jar sit where `make install` puts them under the repo root,
# so streaming/job.py finds them as it does locally.
#   docker build -f infra/images/streaming.Dockerfile -t ghcr.io/usersignals/streaming:0.1.0 .

# JVM side: the connector jars from Maven Central, then the helper jar compiled against this
# Flink's own jars (the image's lib/ and opt/ are the jars PyFlink's wheel carries).
FROM flink:2.1.3-scala_2.12-java17@sha256:cc557bbe316d804e83195717a41788dc1ddb9a965887bd0ab83d148480a7802d AS flink

FROM maven:3.9.16-eclipse-temurin-17-noble@sha256:b1420375ab2a5f3ef6e0f355367bff4096e23bdea2191af2b95f9f1c71984690 AS jvm
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src
COPY infra/pom.xml infra/jars.sha256 infra/
# As infra/jars.sh: Maven checks the repository's checksums (-C), then the copied set must be
# exactly the pinned one (no jar more, none less, none changed).
RUN mvn -q -B -C -f infra/pom.xml -P flink dependency:copy-dependencies -DoutputDirectory=/src/build/jars/flink
WORKDIR /src/build/jars
RUN diff <(find . -name '*.jar' -exec sha256sum {} + | sed 's| \./| |' | LC_ALL=C sort) \
         <(grep ' flink/' /src/infra/jars.sha256 | LC_ALL=C sort)
WORKDIR /src
COPY --from=flink /opt/flink/lib /opt/flink/lib
COPY --from=flink /opt/flink/opt /opt/flink/opt
COPY streaming/java/src streaming/java/src
RUN javac -nowarn -d build/java-classes -cp "/opt/flink/lib/*:/opt/flink/opt/*:build/jars/flink/*" \
      streaming/java/src/usersignals/flink/*.java \
 && jar cf build/usersignals-flink.jar -C build/java-classes usersignals

# Python side: Ubuntu 22.04's Python 3.11 (the flink image's base), the same interpreter as at run time.
FROM flink AS python
# Ubuntu's security updates replace these versions; the base image's digest pins the rest.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/usersignals
COPY requirements/streaming.lock requirements/streaming.lock
RUN python3.11 -m venv .venv-streaming && .venv-streaming/bin/pip install -r requirements/streaming.lock
COPY pyproject.toml README.md ./
COPY usersignals usersignals
COPY streaming streaming
RUN .venv-streaming/bin/pip install --no-deps -e .

FROM flink
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=python /opt/usersignals /opt/usersignals
COPY --from=jvm /src/build/jars/flink /opt/usersignals/build/jars/flink
COPY --from=jvm /src/build/usersignals-flink.jar /opt/usersignals/build/usersignals-flink.jar
# The manifest's jarURI names the Python driver without its version; checkpoints and savepoints
# go to s3:// (flink-indexer.yaml), which Flink reads through its bundled S3 plugin.
RUN ln -s "/opt/flink/opt/flink-python-2.1.3.jar" /opt/flink/opt/flink-python.jar \
 && mkdir -p /opt/flink/plugins/s3-fs-presto \
 && cp /opt/flink/opt/flink-s3-fs-presto-2.1.3.jar /opt/flink/plugins/s3-fs-presto/ \
 && mkdir -p /opt/usersignals/var && chown -R flink:flink /opt/usersignals/var /opt/flink/plugins
# PyFlink's driver starts `python`; the job then sets python.executable to the same interpreter.
ENV PATH=/opt/usersignals/.venv-streaming/bin:$PATH PYFLINK_CLIENT_EXECUTABLE=/opt/usersignals/.venv-streaming/bin/python \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 9999:9999
