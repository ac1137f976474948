#!/usr/bin/env bash
# Install everything the project needs on a fresh machine of this kind (Debian, Python 3.11,
# root): Debian packages, the three Python environments from their lock files (main,
# streaming for PyFlink, airflow), and the Flink helper jar. Idempotent and quick when
# nothing changed (a stamp records the inputs).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
STAMP=.install-stamp
inputs_hash() {
  cat requirements/*.lock pyproject.toml infra/install.sh infra/shade_jackson.py \
    streaming/java/src/usersignals/flink/*.java \
    | sha256sum | cut -d' ' -f1
}
want=$(inputs_hash)
if [[ -f $STAMP && $(cat $STAMP) == "$want" && -x .venv/bin/python && -x .venv-streaming/bin/python \
      && -x .venv-airflow/bin/airflow \
      && -f build/usersignals-flink.jar && -f build/iceberg-shaded-jackson.jar && -f build/iceberg-spark-runtime.jar ]] \
   && command -v redis-server >/dev/null; then
  exit 0
fi

echo "==> Debian packages"
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v javac >/dev/null || need+=(openjdk-17-jdk-headless)
command -v curl >/dev/null || need+=(curl)
# Lakehouse: jarjar (shades Jackson for the Iceberg runtime), SQLite JDBC (the local catalog),
# OpenBLAS (Spark MLlib), Chromium (the Airflow UI browser test).
[[ -f /usr/share/java/jarjar.jar ]] || need+=(libjarjar-java)
[[ -f /usr/share/java/sqlite-jdbc.jar ]] || need+=(libxerial-sqlite-jdbc-java)
ls /usr/lib/x86_64-linux-gnu/libopenblas*.so* /usr/lib/aarch64-linux-gnu/libopenblas*.so* >/dev/null 2>&1 \
  || need+=(libopenblas0-pthread)
command -v chromium >/dev/null || need+=(chromium)
# Observability: a real Prometheus server (+ promtool) and the node exporter (batch textfile metrics).
command -v prometheus >/dev/null || need+=(prometheus)
command -v prometheus-node-exporter >/dev/null || need+=(prometheus-node-exporter)
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The Debian services would hold ports 6379/9090/9100; the local stack runs its own.
if command -v systemctl >/dev/null; then
  for svc in redis-server prometheus prometheus-node-exporter; do
    systemctl is-active --quiet $svc 2>/dev/null && systemctl stop $svc || true
  done
fi

make_env() {  # make_env DIR LOCKFILE
  local dir=$1 lock=$2
  [[ -x $dir/bin/python ]] || "$PY" -m venv "$dir"
  "$dir/bin/python" -m pip install -q --upgrade pip
  "$dir/bin/python" -m pip install -q -r "$lock"
  "$dir/bin/python" -m pip install -q --no-deps -e . 2>&1 | grep -v -i "warning\|^ \|^$" || true
}
echo "==> main environment (.venv)"
make_env .venv requirements/main.lock
echo "==> streaming environment (.venv-streaming)"
make_env .venv-streaming requirements/streaming.lock
echo "==> Airflow environment (.venv-airflow)"
make_env .venv-airflow requirements/airflow.lock

echo "==> Flink helper jar"
PYFLINK_LIB=$(.venv-streaming/bin/python -c 'import pyflink, os; print(os.path.join(os.path.dirname(pyflink.__file__), "lib"))')
for jar in flink-connector-kafka.jar kafka-clients.jar; do
  [[ -f $PYFLINK_LIB/$jar ]] || { echo "missing $PYFLINK_LIB/$jar (shigawire-apache-flink-libraries)"; exit 1; }
done
rm -rf build/java-classes && mkdir -p build/java-classes
javac -nowarn -d build/java-classes -cp "$PYFLINK_LIB/*" streaming/java/src/usersignals/flink/*.java
jar cf build/usersignals-flink.jar -C build/java-classes usersignals

echo "==> Spark's Iceberg jars (build/): the runtime and its shaded Jackson"
ln -sf "$(.venv/bin/python -c 'import os, snowpark_connect_deps_iceberg as d
print(os.path.join(os.path.dirname(d.__file__), "jars", "iceberg-spark-runtime-3.5_2.12-1.10.2.jar"))')" \
  build/iceberg-spark-runtime.jar
.venv/bin/python infra/shade_jackson.py build/iceberg-shaded-jackson.jar

echo "$want" > $STAMP
echo "==> installed"
