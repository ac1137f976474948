#!/usr/bin/env bash
# make audit: check every locked dependency of the three environments (requirements/*.lock)
# against known vulnerabilities with pip-audit. --strict: a package that could not be checked
# fails the audit, as a found vulnerability does, so a run that checked nothing never passes.
# pip-audit asks a vulnerability service (PyPI's JSON API by default; `AUDIT_SERVICE=osv` for
# OSV); a machine that reaches only a package mirror without that API cannot audit.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=build/audit
PIP_AUDIT_VERSION=2.10.1
if [[ ! -x $VENV/bin/pip-audit ]] || ! $VENV/bin/pip-audit --version | grep -q " $PIP_AUDIT_VERSION\$"; then
  "${PYTHON:-python3}" -m venv "$VENV"
  "$VENV/bin/pip" install -qq "pip-audit==$PIP_AUDIT_VERSION"
fi
args=()
for lock in requirements/*.lock; do args+=(-r "$lock"); done
if ! "$VENV/bin/pip-audit" --strict --no-deps --disable-pip --progress-spinner off \
      --vulnerability-service "${AUDIT_SERVICE:-pypi}" "${args[@]}"; then
  echo "audit failed: a vulnerable dependency (above), or one that could not be checked" \
       "(\"not found\": the vulnerability service is unreachable from here)" >&2
  exit 1
fi
