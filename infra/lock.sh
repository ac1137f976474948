#!/usr/bin/env bash
# Resolve requirements/*.in into requirements/*.lock in throwaway environments.
set -euo pipefail
cd "$(dirname "$0")/.."
for name in main streaming airflow; do
  tmp=$(mktemp -d)
  python3 -m venv "$tmp/env"
  "$tmp/env/bin/pip" install -q --upgrade pip
  "$tmp/env/bin/pip" install -q -r "requirements/$name.in"
  { echo "# Locked from requirements/$name.in with pip (Python 3.11). Regenerate: make lock"
    "$tmp/env/bin/pip" freeze; } > "requirements/$name.lock"
  rm -rf "$tmp"
  echo "locked requirements/$name.lock"
done
