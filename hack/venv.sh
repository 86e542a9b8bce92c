#!/usr/bin/env bash
# Creates (or updates) .venv with the operator package and the test dependencies.
# Idempotent: a venv whose inputs did not change is left as it is.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"
PY=${PYTHON:-python3}
stamp=.venv/.inputs.sha256
want=$(cat operator/pyproject.toml requirements-test.txt | sha256sum | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  exit 0
fi
log "setting up .venv (operator package + test dependencies)"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/pip install -q --disable-pip-version-check -e 'operator[download]' -r requirements-test.txt
echo "$want" > "$stamp"
