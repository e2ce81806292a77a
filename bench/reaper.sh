#!/usr/bin/env bash
# One reaper cycle of the quota controller over 10,000 users of a real
# JupyterHub: list every user (paginated), read every record, record activity,
# decide who must be stopped. Prints seconds per cycle (target: <= 10 s) and
# the ratio against a peer measured in the same run: a bare Python client that
# only pages through GET /hub/api/users (the floor any reaper pays).
#
# Needs jupyterhub and configurable-http-proxy (.ci/install-hub.sh).
# Env: USERS (default 10000), CYCLES (default 3), PROFILE (debug|release,
# default release; builds only the hubfs package), HUBFS_BIN (use this binary,
# build nothing).
set -euo pipefail

USERS="${USERS:-10000}"
CYCLES="${CYCLES:-3}"
PROFILE="${PROFILE:-release}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
command -v jupyterhub >/dev/null || { echo "jupyterhub missing: run .ci/install-hub.sh" >&2; exit 1; }
command -v configurable-http-proxy >/dev/null || { echo "configurable-http-proxy missing: run .ci/install-hub.sh" >&2; exit 1; }

if [ -n "${HUBFS_BIN:-}" ]; then
    HUBFS="$HUBFS_BIN"
    PROFILE="given binary"
else
    if [ "$PROFILE" = release ]; then
        (cd "$ROOT" && cargo build --release -p hubfs --bin hubfs >&2)
    else
        (cd "$ROOT" && cargo build -p hubfs --bin hubfs >&2)
    fi
    HUBFS="$ROOT/target/$PROFILE/hubfs"
fi

WORK="$(mktemp -d)"
HUB_PID=""
cleanup() {
    if [ -n "$HUB_PID" ]; then kill -- "-$HUB_PID" 2>/dev/null || true; wait "$HUB_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PORT=$(port); HUB_PORT=$(port); API_PORT=$(port)
SVC_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
ADMIN_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
printf '%s' "$SVC_TOKEN" > "$WORK/token"

cat > "$WORK/jupyterhub_config.py" <<PY
c = get_config()
c.JupyterHub.bind_url = "http://127.0.0.1:$PORT"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:$HUB_PORT"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:$API_PORT"
c.JupyterHub.db_url = "sqlite:///$WORK/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "$WORK/cookie_secret"
c.JupyterHub.pid_file = "$WORK/jupyterhub.pid"
c.ConfigurableHTTPProxy.pid_file = "$WORK/proxy.pid"
c.JupyterHub.authenticator_class = "dummy"
c.JupyterHub.services = [
    {"name": "hubfs", "api_token": "$SVC_TOKEN"},
    {"name": "bench-admin", "api_token": "$ADMIN_TOKEN"},
]
c.JupyterHub.load_roles = [
    {"name": "hubfs", "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"], "services": ["hubfs"]},
    {"name": "bench-admin", "scopes": ["admin:users"], "services": ["bench-admin"]},
]
PY
(cd "$WORK" && exec setsid jupyterhub -f "$WORK/jupyterhub_config.py" >"$WORK/hub.log" 2>&1) &
HUB_PID=$!
URL="http://127.0.0.1:$PORT"

python3 - "$URL" "$ADMIN_TOKEN" "$USERS" "$WORK/control" <<'PY' || { tail -30 "$WORK/hub.log" >&2; exit 1; }
import json, os, sys, time, urllib.request
url, token, n, control = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
deadline = time.time() + 300
while True:
    try:
        urllib.request.urlopen(url + "/hub/api/", timeout=2).read()
        break
    except Exception:
        if time.time() > deadline:
            sys.exit("jupyterhub did not start")
        time.sleep(0.3)
names = ["user%05d" % i for i in range(n)]
t = time.time()
for i in range(0, n, 1000):
    req = urllib.request.Request(url + "/hub/api/users", method="POST",
        data=json.dumps({"usernames": names[i:i + 1000]}).encode(),
        headers={"Authorization": "token " + token, "Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=300).read()
print("created %d hub users in %.1f s" % (n, time.time() - t), file=sys.stderr)
# A seed-format record for every user (names are in the safe set, so the
# encoded directory is the name itself).
for i, name in enumerate(names):
    d = os.path.join(control, name)
    os.makedirs(d, exist_ok=True)
    used = (i % 250) * (1 << 30)
    with open(os.path.join(d, "quota.yaml"), "w") as f:
        f.write("actual_bytes: %d\nfraction_used: %r\nlast_activity: '0001-01-01T01:01'\n"
                "lockout_enabled: true\nquota_bytes: 214748364800\nquota_enabled: true\n"
                "quota_state: ok\nreaper_time: '0001-01-01T01:01'\nstarted: '0001-01-01T01:01'\n"
                "stopped: '0001-01-01T01:01'\ntimed_out: false\nuser: %s\nwarn_fraction: 0.8\n"
                % (used, used / 214748364800, name))
PY

peer() {
    python3 - "$URL" "$SVC_TOKEN" <<'PY'
import json, sys, time, urllib.request
url, token = sys.argv[1], sys.argv[2]
t = time.time()
offset, total = 0, 0
while True:
    req = urllib.request.Request("%s/hub/api/users?offset=%d&limit=200" % (url, offset),
        headers={"Authorization": "token " + token, "Accept": "application/jupyterhub-pagination+json"})
    page = json.loads(urllib.request.urlopen(req, timeout=60).read())
    total += len(page["items"])
    nxt = page["_pagination"]["next"]
    if not nxt:
        break
    offset = nxt["offset"]
print("%.3f %d" % (time.time() - t, total))
PY
}

echo "reaper cycle over $USERS hub users ($PROFILE build)"
for i in $(seq 1 "$CYCLES"); do
    read -r PEER_S PEER_N < <(peer)
    OUT=$("$HUBFS" --log-level warn controller --once --control-dir "$WORK/control" \
        --hub-url "$URL" --hub-token-file "$WORK/token")
    read -r CYCLE_S HUB_USERS < <(python3 -c 'import json,sys; r=json.loads(sys.argv[1])["reaper"]; print(r["seconds"], r["hub_users"])' "$OUT")
    python3 -c 'import sys; c,p=float(sys.argv[1]),float(sys.argv[2]); print("cycle %s: hubfs reaper %.2f s for %s users; peer (bare paginated listing, python) %.2f s for %s users; ratio %.2f" % (sys.argv[3], c, sys.argv[4], p, sys.argv[5], c/p))' \
        "$CYCLE_S" "$PEER_S" "$i" "$HUB_USERS" "$PEER_N"
done
