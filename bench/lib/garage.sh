# shellcheck shell=bash
# A single-node Garage for the bench scripts, sourced by them: one copy of
# its configuration and start-up instead of one per script.
#
# start_garage TRIES: needs $W (work dir), $GARAGE (binary) and the array
# PIDS (the caller's cleanup kills them); writes $W/garage.toml, starts the
# server with the default bucket "bench", waits up to TRIES x 0.1 s for its
# admin health check, and sets S3P RPCP ADMP (ports), AK SK (S3 key),
# MT (admin/metrics token) and EP (S3 endpoint).

port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

start_garage() {
    local tries=$1
    S3P=$(port); RPCP=$(port); ADMP=$(port)
    AK=GK$(head -c12 /dev/urandom | od -An -tx1 | tr -d ' \n')
    SK=$(head -c32 /dev/urandom | od -An -tx1 | tr -d ' \n')
    MT=$(head -c16 /dev/urandom | od -An -tx1 | tr -d ' \n')
    cat > "$W/garage.toml" <<TOML
metadata_dir = "$W/meta"
data_dir = "$W/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$RPCP"
rpc_public_addr = "127.0.0.1:$RPCP"
rpc_secret = "$(head -c32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$S3P"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:$ADMP"
admin_token = "$MT"
metrics_token = "$MT"
TOML
    GARAGE_DEFAULT_ACCESS_KEY=$AK GARAGE_DEFAULT_SECRET_KEY=$SK GARAGE_DEFAULT_BUCKET=bench \
        RUST_LOG=warn "$GARAGE" -c "$W/garage.toml" server --single-node --default-bucket >"$W/garage.log" 2>&1 &
    PIDS+=($!)
    EP=http://127.0.0.1:$S3P
    for _ in $(seq "$tries"); do curl -sf -H "Authorization: Bearer $MT" "http://127.0.0.1:$ADMP/health" >/dev/null && break; sleep 0.1; done
}
