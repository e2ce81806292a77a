#!/usr/bin/env bash
# Installs jupyterhub-kubespawner (PyPI) into its own venv, the package whose
# slug functions quota/src/slugs.rs ports, and checks that the checked-in
# table quota/tests/fixtures/kubespawner-slugs.json is exactly what the real
# package makes (the Rust test compares every row of that table). Idempotent.
set -euo pipefail

PY="${PYTHON:-python3}"
VERSION="7.1.0"
VENV="${KUBESPAWNER_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/hubfs/kubespawner-$VERSION}"
if ! "$VENV/bin/python" -c 'import kubespawner.slugs' 2>/dev/null; then
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "jupyterhub-kubespawner==$VERSION"
fi
here="$(cd "$(dirname "$0")/.." && pwd)"
fixture="$here/quota/tests/fixtures/kubespawner-slugs.json"
if ! "$VENV/bin/python" "$here/quota/tests/fixtures/kubespawner_slugs.py" | diff -q - "$fixture" >/dev/null; then
    echo "install-kubespawner: $fixture differs from what kubespawner $VERSION makes; regenerate it with" >&2
    echo "  $VENV/bin/python quota/tests/fixtures/kubespawner_slugs.py > quota/tests/fixtures/kubespawner-slugs.json" >&2
    exit 1
fi
echo "install-kubespawner: kubespawner $("$VENV/bin/python" -c 'import kubespawner; print(kubespawner.__version__)'), slug table up to date"
