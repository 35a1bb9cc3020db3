#!/usr/bin/env bash
# test/pgbouncer.sh: tenant context through a real PgBouncer in transaction
# pooling mode with exactly one server connection per pool.
#
# Shell TAP, run by `prove -e bash` from scripts/test.sh with PGHOST, PGPORT,
# PGDATABASE and PGUSER pointing at a preloaded cluster (PGUSER a superuser).
# It creates its own database and roles, starts /usr/sbin/pgbouncer on a free
# local port, drives several psql clients through it over fifos (each batch
# ends with an \echo marker, so every wait is bounded and nothing sleeps a
# fixed time), and removes everything on exit.
#
# Pools (one server connection each):
#   open    as tenancy_pooler_app: tenancy.allow_session_tenant on (default)
#   guarded as tenancy_pooler_guarded: ALTER ROLE ... SET allow_session_tenant = off
set -u

# PgBouncer refuses to run as root; the harness already runs us as postgres.
if [ "$(id -u)" -eq 0 ]; then
    exec runuser -u postgres -- bash "$0" "$@"
fi

PLAN=21
DB=tenancy_pooler
APP=tenancy_pooler_app
GUARDED=tenancy_pooler_guarded
A=11111111-1111-4111-8111-111111111111      # tenant alpha
B=22222222-2222-4222-8222-222222222222      # tenant beta
ROUNDS=${POOLER_ROUNDS:-25}
TIMEOUT=${POOLER_TIMEOUT:-30}               # seconds to wait for any one answer
PGBOUNCER=${PGBOUNCER:-$(command -v pgbouncer || echo /usr/sbin/pgbouncer)}
SERVER_HOST=${PGHOST:-/var/run/postgresql}
SERVER_PORT=${PGPORT:-5432}

source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"
TAP_TIMEOUT=$TIMEOUT
tap_tmpdir TMP tenancy-pgbouncer
declare -a BPID=()
cleanup() {
    [ ${#BPID[@]} -gt 0 ] && tap_kill "${BPID[@]}"
    admin postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" \
        -c "DROP ROLE IF EXISTS $APP" -c "DROP ROLE IF EXISTS $GUARDED" </dev/null >/dev/null
}
tap_at_exit cleanup
# on a bail out, the PgBouncer logs
tap_bail_hook() { local f; for f in "$TMP"/pgbouncer-*.log; do [ -f "$f" ] && sed 's/^/# /' "$f"; done; }

# ---- PgBouncer ----------------------------------------------------------------
# start_bouncer NAME [extra [pgbouncer] lines...]: sets BOUNCER_PORT
start_bouncer() {
    local name=$1; shift
    local ini=$TMP/pgbouncer-$name.ini log=$TMP/pgbouncer-$name.log
    local srv="host=$SERVER_HOST port=$SERVER_PORT dbname=$DB"
    local try port pid i line
    for try in $(seq 20); do
        port=$(tap_free_port) || continue
        mkdir -p "$TMP/sock-$name"
        cat >"$ini" <<EOF
[databases]
open = $srv user=$APP
guarded = $srv user=$GUARDED

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir = $TMP/sock-$name
auth_type = any
pool_mode = transaction
default_pool_size = 1
min_pool_size = 0
reserve_pool_size = 0
max_db_connections = 1
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = $log
pidfile = $TMP/pgbouncer-$name.pid
EOF
        for line in "$@"; do echo "$line" >>"$ini"; done
        : >"$log"
        "$PGBOUNCER" "$ini" >>"$log" 2>&1 </dev/null &
        pid=$!
        for i in $(seq 100); do        # at most 10 s
            if ! kill -0 "$pid" 2>/dev/null; then pid=; break; fi
            if grep -q "listening on 127.0.0.1:$port" "$log"; then
                BPID+=("$pid"); BOUNCER_PORT=$port; return 0
            fi
            sleep 0.1
        done
        [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
    done
    return 1
}

# ---- clients ------------------------------------------------------------------
# start_client N PORT DBALIAS: a psql session through PgBouncer
start_client() { client_start "$1" -h 127.0.0.1 -p "$2" -d "$3"; }
# send N SQL... / recv N / q N SQL...: see client_send, client_recv, client_q
send() { client_send "$@"; }
recv() { client_recv "$@"; }
q() { client_q "$@"; }

CUR="SELECT 'tenant=' || coalesce(tenancy.current_tenant()::text, 'NULL');"
PID="SELECT 'pid=' || pg_backend_pid();"

# ---- setup --------------------------------------------------------------------
[ -x "$PGBOUNCER" ] || bail "pgbouncer not found (install the Debian package pgbouncer)"
BOUNCER_VERSION=$("$PGBOUNCER" --version 2>/dev/null | awk 'NR == 1 { print $2 }')

admin postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" \
    -c "DROP ROLE IF EXISTS $APP" -c "DROP ROLE IF EXISTS $GUARDED" \
    -c "CREATE ROLE $APP LOGIN" -c "CREATE ROLE $GUARDED LOGIN" \
    -c "CREATE DATABASE $DB" </dev/null >/dev/null || bail "cannot create database $DB"
admin "$DB" >/dev/null <<EOF || bail "cannot set up $DB"
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('alpha', 'Alpha', '$A');
SELECT tenancy.create_tenant('beta', 'Beta', '$B');
ALTER ROLE $GUARDED IN DATABASE $DB SET tenancy.allow_session_tenant = off;
EOF

start_bouncer main || bail "pgbouncer did not start"
plan $PLAN
diag "pgbouncer $BOUNCER_VERSION on 127.0.0.1:$BOUNCER_PORT, pool_mode = transaction, one server connection per pool"

# ---- pool "open": the guard is off ------------------------------------------
start_client 1 "$BOUNCER_PORT" open
start_client 2 "$BOUNCER_PORT" open

q 1 "$PID" "SELECT 'user=' || current_user;"; out1=$OUT
q 2 "$PID" "SELECT 'user=' || current_user;"; out2=$OUT
pid=$(printf '%s\n' "$out1" | sed -n 's/^pid=//p')
case $pid in ''|*[!0-9]*) bail "no backend pid through pgbouncer: $(printf '%s' "$out1" | tr '\n' '|')" ;; esac
is "both clients of the open pool run on one server connection" "$out2" "pid=$pid
user=$APP"

# Interleaved transactions.  The client that goes first holds the only
# server connection; the other's BEGIN waits in PgBouncer until it commits,
# and its reads outside a transaction wait for the other's commit in turn.
bad_in=0 bad_out=0 bad_pid=0 detail=
for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) -eq 1 ]; then f=1 s=2; else f=2 s=1; fi
    key[1]=$A; key[2]=$B; ask[1]=alpha; ask[2]=$B   # client 1 by slug, client 2 by key
    send "$f" "BEGIN;" "$PID" "SELECT 'set=' || tenancy.set_tenant('${ask[f]}');" "$CUR"
    recv "$f"; got_f1=$OUT
    send "$s" "BEGIN;" "$PID" "SELECT 'set=' || tenancy.set_tenant('${ask[s]}');" "$CUR"
    q "$f" "$CUR" "COMMIT;"; got_f2=$OUT
    recv "$s"; got_s1=$OUT
    send "$f" "$CUR"                       # waits for the second client's commit
    q "$s" "$CUR" "COMMIT;"; got_s2=$OUT
    recv "$f"; got_f3=$OUT
    q "$s" "$CUR"; got_s3=$OUT
    [ "$got_f1" = "pid=$pid"$'\n'"set=${key[f]}"$'\n'"tenant=${key[f]}" ] || { bad_in=$((bad_in + 1)); detail+=" r$r:f1=[$got_f1]"; }
    [ "$got_s1" = "pid=$pid"$'\n'"set=${key[s]}"$'\n'"tenant=${key[s]}" ] || { bad_in=$((bad_in + 1)); detail+=" r$r:s1=[$got_s1]"; }
    [ "$got_f2" = "tenant=${key[f]}" ] || { bad_in=$((bad_in + 1)); detail+=" r$r:f2=[$got_f2]"; }
    [ "$got_s2" = "tenant=${key[s]}" ] || { bad_in=$((bad_in + 1)); detail+=" r$r:s2=[$got_s2]"; }
    [ "$got_f3" = "tenant=NULL" ] || { bad_out=$((bad_out + 1)); detail+=" r$r:f3=[$got_f3]"; }
    [ "$got_s3" = "tenant=NULL" ] || { bad_out=$((bad_out + 1)); detail+=" r$r:s3=[$got_s3]"; }
    case "$got_f1$got_s1" in *"pid=$pid"*"pid=$pid"*) ;; *) bad_pid=$((bad_pid + 1)) ;; esac
done
is "interleaved transactions ($ROUNDS rounds) share the one server connection" "$bad_pid" 0
is "inside its transaction each client sees only its own tenant ($ROUNDS rounds)" "$bad_in" 0
is "outside a transaction each client sees no tenant ($ROUNDS rounds)" "$bad_out" 0
[ -n "$detail" ] && diag "mismatches:$(printf '%s' "$detail" | tr '\n' '|' | cut -c1-2000)"

# Rolled-back work leaves nothing for the next client on the connection.
q 1 "BEGIN;" "SELECT 'set=' || tenancy.set_tenant('$A');" "ROLLBACK;"
q 2 "$CUR"
is "after a transaction that set the tenant and rolled back, the other client sees no tenant" "$OUT" "tenant=NULL"

q 1 "BEGIN;" "SET LOCAL tenancy.tenant_id = '$A';" "SELECT 1 / 0;" "ROLLBACK;"
q 2 "$CUR"
is "after a failed transaction with SET LOCAL, the other client sees no tenant" "$OUT" "tenant=NULL"

q 1 "BEGIN;" "SAVEPOINT s;" "SELECT 'set=' || tenancy.set_tenant('$A', false);" "ROLLBACK TO SAVEPOINT s;" "COMMIT;"
q 2 "$CUR"
is "a session-level set_tenant() rolled back to a savepoint leaves nothing behind" "$OUT" "tenant=NULL"

# The hazard the guard exists for: without it, a session-level tenant set by
# one client stays on the server connection and the next client inherits it.
q 1 "SET tenancy.tenant_id = '$A';"
q 2 "$CUR"
is "hazard (guard off): client 1's session-level SET is seen by client 2" "$OUT" "tenant=$A"
q 2 "DISCARD ALL;"
q 1 "$CUR"
is "DISCARD ALL on the shared connection clears the leaked tenant" "$OUT" "tenant=NULL"
q 2 "SELECT 'set=' || tenancy.set_tenant('beta', false);"
q 1 "$CUR"
is "hazard (guard off): set_tenant(..., false) by client 2 is seen by client 1" "$OUT" "tenant=$B"
q 1 "RESET tenancy.tenant_id;" "$CUR"
is "RESET clears it" "$OUT" "tenant=NULL"

# ---- pool "guarded": tenancy.allow_session_tenant = off for its role -------
start_client 3 "$BOUNCER_PORT" guarded
start_client 4 "$BOUNCER_PORT" guarded
q 3 "$PID" "SHOW tenancy.allow_session_tenant;"; out3=$OUT
gpid=$(printf '%s\n' "$out3" | sed -n 's/^pid=//p')
q 4 "$PID" "SHOW tenancy.allow_session_tenant;"
is "both clients of the guarded pool share one server connection with the guard on" "$OUT|$out3" "pid=$gpid
off|pid=$gpid
off"

# refused STATEMENT DESCRIPTION: client 3 runs it, client 4 must see nothing
refused() {
    q 3 "$1"
    is "guard on: $2 is refused with 55P02" "$STATE" "55P02"
    q 4 "$CUR"
    is "guard on: after the refused $2 the other client sees no tenant" "$OUT" "tenant=NULL"
}
refused "SET tenancy.tenant_id = '$A';" "SET tenancy.tenant_id"
refused "SELECT set_config('tenancy.tenant_id', '$A', false);" "set_config(..., false)"
refused "SELECT tenancy.set_tenant('$A', false);" "set_tenant(..., false)"

q 3 "BEGIN;" "SET tenancy.tenant_id = '$A';" "COMMIT;"
got3=$STATE
q 4 "$CUR"
is "guard on: the COMMIT of a transaction that ran SET is refused (55P02) and nothing leaks" "$got3 $OUT" "55P02 tenant=NULL"

q 3 "BEGIN;" "SET LOCAL tenancy.tenant_id = '$A';" "$CUR" "COMMIT;"
got3="$STATE $OUT"
q 4 "BEGIN;" "SELECT 'set=' || tenancy.set_tenant('beta');" "$CUR" "COMMIT;"
got4="$STATE $OUT"
q 3 "$CUR"
is "guard on: SET LOCAL and set_tenant() still work, and last one transaction" "$got3|$got4|$OUT" \
   "00000 tenant=$A|00000 set=$B
tenant=$B|tenant=NULL"

# ---- track_extra_parameters (PgBouncer 1.20+) -------------------------------
if [ "$(printf '%s\n' 1.20 "$BOUNCER_VERSION" | sort -V | head -n1)" = 1.20 ]; then
    start_bouncer tracked "track_extra_parameters = tenancy.tenant_id" || bail "pgbouncer (tracked) did not start"
    start_client 5 "$BOUNCER_PORT" open
    start_client 6 "$BOUNCER_PORT" open
    q 5 "SET tenancy.tenant_id = '$A';"
    q 6 "SET tenancy.tenant_id = '$B';"
    q 5 "$PID" "$CUR"; got5=$OUT
    q 6 "$PID" "$CUR"; got6=$OUT
    q 5 "RESET tenancy.tenant_id;"
    q 6 "$CUR"; got6b=$OUT
    q 5 "$CUR"; got5b=$OUT
    tpid=$(printf '%s\n' "$got5" | sed -n 's/^pid=//p')
    is "track_extra_parameters = tenancy.tenant_id carries each client's own session tenant" \
       "$got5|$got6|$got6b|$got5b" "pid=$tpid
tenant=$A|pid=$tpid
tenant=$B|tenant=$B|tenant=NULL"
else
    skip "track_extra_parameters needs PgBouncer 1.20 or later (found $BOUNCER_VERSION); the guard covers this case"
fi

tap_end
