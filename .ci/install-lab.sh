#!/usr/bin/env bash
# Installs what the JupyterLab quota test (tests/tests/lab_quota.rs) needs:
# Debian's chromium (driven headless by playwright-core; no browser
# download), a JupyterLab 4 venv at /opt/hubfs-lab built on Debian's python3
# so that the notebook user (uid 1000) can run it, and the hubfs-jupyterlab
# extension (quota/jupyterlab: npm ci, tsc + the prebuilt labextension,
# pip install) in that venv. Idempotent; the extension is rebuilt and
# reinstalled every run (about 40 s), so the test always runs the sources.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${HUBFS_LAB_VENV:-/opt/hubfs-lab}"
export DEBIAN_FRONTEND=noninteractive
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3 python3-venv)
fc-list 2>/dev/null | grep -qi dejavu || need+=(fonts-dejavu-core)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

if [ ! -x "$VENV/bin/jupyter-lab" ]; then
    /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet 'jupyterlab>=4.2,<5' 'jupyter-resource-usage>=1,<2'
fi

cd quota/jupyterlab
npm ci --no-audit --no-fund --loglevel=error
PYTHON="$VENV/bin/python" npm run --silent build >/dev/null
"$VENV/bin/pip" install --quiet --force-reinstall --no-deps .
# (grep on a captured text: `grep -q` in a pipe under pipefail fails on SIGPIPE)
labext=$("$VENV/bin/jupyter" labextension list 2>&1)
serverext=$("$VENV/bin/jupyter" server extension list 2>&1)
grep -q 'hubfs-jupyterlab.*enabled' <<<"$labext" || {
    echo "install-lab: hubfs-jupyterlab is not enabled in $VENV" >&2
    exit 1
}
grep -q 'hubfs_jupyterlab.*enabled' <<<"$serverext" || {
    echo "install-lab: the hubfs_jupyterlab server extension is not enabled in $VENV" >&2
    exit 1
}
echo "install-lab: $(chromium --version), jupyterlab $("$VENV/bin/python" -c 'import jupyterlab; print(jupyterlab.__version__)'), hubfs-jupyterlab built and installed in $VENV"
