#!/usr/bin/env bash
# TAP: signed tenant tokens through a real PgBouncer in transaction pooling
# mode, one server connection for two clients (issue 16): each transaction
# verifies its own token, and no tenant or user key is carried over to the
# next transaction, whichever client runs it.  Own server with a keys file
# (HS256 and EdDSA keys); tokens minted by python3-jwt.
set -u
# PgBouncer refuses to run as root; the harness already runs us as postgres.
if [ "$(id -u)" -eq 0 ]; then
    exec runuser -u postgres -- bash "$0" "$@"
fi
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"
PGBOUNCER=${PGBOUNCER:-$(command -v pgbouncer || echo /usr/sbin/pgbouncer)}
ROUNDS=10
tap_tmpdir DIR token-pgbouncer
port=$(tap_free_port)
[ -x "$PGBOUNCER" ] || bail "pgbouncer not found (install the Debian package pgbouncer)"

python3 - "$DIR" <<'PY' || bail "python3 could not mint the tokens (python3-jwt, python3-cryptography)"
import base64, os, sys, time
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
d = sys.argv[1]
now = int(time.time())
hs = os.urandom(32)
ed = ed25519.Ed25519PrivateKey.generate()
pub = ed.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
with open(os.path.join(d, "keys"), "w") as f:
    f.write("hs1 HS256 %s\ned1 EdDSA %s\n" % (base64.b64encode(hs).decode(), base64.b64encode(pub).decode()))
with open(os.path.join(d, "a.jwt"), "w") as f:
    f.write(jwt.encode({"tenant_id": "acme", "sub": "alice", "exp": now + 3600}, hs, algorithm="HS256", headers={"kid": "hs1"}))
with open(os.path.join(d, "b.jwt"), "w") as f:
    f.write(jwt.encode({"tenant_id": "globex", "sub": "bob", "exp": now + 3600}, ed, algorithm="EdDSA", headers={"kid": "ed1"}))
PY

plan 4
own_server_init "$DIR/data" "$port" "$DIR" "shared_preload_libraries = 'tenancy'" \
    "tenancy.worker_enabled = off" "tenancy.token_keys_file = 'token_keys'"
install -m 600 "$DIR/keys" "$DIR/data/token_keys"
own_server_run "$DIR/data"
psql_at "$DIR" "$port" -d postgres >/dev/null <<'SQL'
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('acme', 'Acme', 'aaaaaaaa-0000-0000-0000-000000000001');
SELECT tenancy.create_tenant('globex', 'Globex', 'bbbbbbbb-0000-0000-0000-000000000002');
CREATE ROLE tok_app LOGIN;
SQL

# PgBouncer, transaction pooling, one server connection.
bport=$(tap_free_port)
mkdir -p "$DIR/bsock"
cat >"$DIR/pgbouncer.ini" <<EOF
[databases]
app = host=$DIR port=$port dbname=postgres user=tok_app

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bport
unix_socket_dir = $DIR/bsock
auth_type = any
pool_mode = transaction
default_pool_size = 1
min_pool_size = 0
reserve_pool_size = 0
max_db_connections = 1
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = $DIR/pgbouncer.log
pidfile = $DIR/pgbouncer.pid
EOF
"$PGBOUNCER" "$DIR/pgbouncer.ini" >>"$DIR/pgbouncer.log" 2>&1 </dev/null &
BPID=$!
tap_at_exit "tap_kill $BPID"
wait_for 10 grep -q "listening on 127.0.0.1:$bport" "$DIR/pgbouncer.log" || bail "pgbouncer did not start"

client_start 1 -h 127.0.0.1 -p "$bport" -d app -v a="$(cat "$DIR/a.jwt")"
client_start 2 -h 127.0.0.1 -p "$bport" -d app -v b="$(cat "$DIR/b.jwt")"
CUR="SELECT 'now=' || coalesce(tenancy.current_tenant_text(), 'NULL') || '/' || coalesce(tenancy.current_user_key(), 'NULL');"
PID="SELECT 'pid=' || pg_backend_pid();"
client_q 1 "$PID"; pid1=$OUT
client_q 2 "$PID"; pid2=$OUT
is "both clients run on one server connection" "$pid2" "$pid1"

bad_in=0 bad_out=0 detail=
for r in $(seq "$ROUNDS"); do
    # Client 1 with acme's HS256 token, client 2 with globex's EdDSA token.
    client_q 1 "BEGIN;" "SELECT tenancy.set_tenant_token(:'a') \\g /dev/null" "$CUR" "COMMIT;"
    [ "$OUT" = "now=aaaaaaaa-0000-0000-0000-000000000001/alice" ] || { bad_in=$((bad_in + 1)); detail+=" r$r.1in:$OUT"; }
    client_q 2 "$CUR"
    [ "$OUT" = "now=NULL/NULL" ] || { bad_out=$((bad_out + 1)); detail+=" r$r.2out:$OUT"; }
    client_q 2 "BEGIN;" "SELECT tenancy.set_tenant_token(:'b') \\g /dev/null" "$CUR" "COMMIT;"
    [ "$OUT" = "now=bbbbbbbb-0000-0000-0000-000000000002/bob" ] || { bad_in=$((bad_in + 1)); detail+=" r$r.2in:$OUT"; }
    client_q 1 "$CUR"
    [ "$OUT" = "now=NULL/NULL" ] || { bad_out=$((bad_out + 1)); detail+=" r$r.1out:$OUT"; }
done
is "$ROUNDS rounds: each transaction has its own token's tenant and user key" "$bad_in" 0
is "$ROUNDS rounds: nothing carried over to the next transaction, other client or not" "$bad_out" 0
[ -n "$detail" ] && diag "$detail"
client_q 1 "$PID"
is "still the one server connection" "$OUT" "$pid1"
tap_end
