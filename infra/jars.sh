#!/usr/bin/env bash
# The JVM jars (and Trino's archives) of infra/pom.xml, from Maven Central, into build/jars/<profile>/.
#   infra/jars.sh fetch   copy every profile's jars, then check them against infra/jars.sha256
#   infra/jars.sh lock    copy them, then (re)write infra/jars.sha256 (after changing a version)
# Maven verifies each download against the repository's checksum (-C); the SHA-256 list pins the
# exact files, so a changed artifact, or one more or one fewer, fails the install.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILES=(kafka flink spark trino)
mode=${1:-fetch}
rm -rf build/jars
mkdir -p build
for p in "${PROFILES[@]}"; do
  mvn -q -B -C -f infra/pom.xml -P "$p" dependency:copy-dependencies -DoutputDirectory="$PWD/build/jars/$p" \
    >build/mvn-$p.log 2>&1 || { cat build/mvn-$p.log; echo "Maven could not copy the $p jars (above)"; exit 1; }
done
current() { (cd build/jars && find . \( -name '*.jar' -o -name '*.tar.gz' -o -name '*.zip' \) | sort | xargs sha256sum | sed 's| \./| |'); }
if [[ $mode == lock ]]; then
  current > infra/jars.sha256
  echo "wrote infra/jars.sha256 ($(wc -l < infra/jars.sha256) jars)"
  exit 0
fi
if ! diff <(current) infra/jars.sha256 >/tmp/usersignals-jars.diff; then
  echo "the jars Maven copied differ from infra/jars.sha256 (< copied, > pinned):"
  cat /tmp/usersignals-jars.diff
  echo "after a deliberate change of infra/pom.xml, run: make jars-lock"
  exit 1
fi
