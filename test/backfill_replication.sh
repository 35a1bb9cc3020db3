#!/usr/bin/env bash
# tenancy.backfill(max_replication_lag => ...) against a real streaming
# standby: while the standby replays more than the bound behind (here: it
# applies commits 3 s late, recovery_min_apply_delay), the backfill holds
# before its first batch and says why in tenancy.backfill_jobs; once the
# standby catches up it runs to the end.
# Starts its own primary and standby (make test's cluster has no standby).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"
tap_tmpdir DIR bf-repl
PORT=$(tap_free_port)
SPORT=$((PORT + 1))
bf=
tap_at_exit 'kill "$bf" 2>/dev/null'

plan 6
own_server_start "$DIR/primary" "$PORT" "$DIR" "shared_preload_libraries = 'tenancy'"
tap_run "$BINDIR/pg_basebackup" -h "$DIR" -p "$PORT" -U "$TAP_USER" -D "$DIR/standby" -R -X stream >"$DIR/basebackup.log" 2>&1 \
    || { cat "$DIR/basebackup.log" >&2; bail "pg_basebackup failed"; }
printf "port = %s\nrecovery_min_apply_delay = '3s'\nwal_receiver_status_interval = '1s'\n" "$SPORT" \
    | tap_run tee -a "$DIR/standby/postgresql.conf" >/dev/null
own_server_run "$DIR/standby"

q() { psql_at "$DIR" "$PORT" -d postgres "$@"; }
qs() { psql_at "$DIR" "$SPORT" -d postgres "$@"; }
# until SECONDS SQL: poll the primary until SQL returns t; prints t or f
is_true() { [ "$(q -c "$1")" = t ]; }
until_true() { if wait_for "$1" is_true "$2"; then echo t; else echo f; fi; }

q -c "SET client_min_messages = warning" -c "CREATE EXTENSION tenancy" \
  -c "SELECT tenancy.create_tenant('acme', 'Acme', '11111111-1111-1111-1111-111111111111')" \
  -c "CREATE TABLE repl_t (id int PRIMARY KEY, tenant_id uuid)" \
  -c "INSERT INTO repl_t SELECT g FROM generate_series(1, 2000) g" >/dev/null || bail "setup failed"

# Commits on the primary until the standby's replay lag is measured over 1 s.
lagging=f
for _ in $(seq 30); do
    q -c "CREATE TEMP TABLE tick (); DROP TABLE tick" >/dev/null
    [ "$(q -c "SELECT coalesce(max(replay_lag) > interval '1s', false) FROM pg_stat_replication")" = t ] && { lagging=t; break; }
    sleep 0.5
done
expect "the standby replays over 1 s behind" t "$lagging"

psql -X -q -h "$DIR" -p "$PORT" -U "$TAP_USER" -d postgres -c \
    "CALL tenancy.backfill('repl_t', tenant => 'acme', batch_size => 100, max_batch_size => 100, max_replication_lag => '1s')" \
    >"$DIR/backfill.out" 2>&1 &
bf=$!
expect "the backfill holds, and says why" t \
    "$(until_true 20 "SELECT coalesce(bool_and(throttle LIKE 'replication lag % > 00:00:01'), false) FROM tenancy.backfill_jobs WHERE relation = 'repl_t'::regclass")"
sleep 2
expect "no batch ran while the standby lagged" "0 2000" \
    "$(q -c "SELECT (SELECT rows_done FROM tenancy.backfill_jobs WHERE relation = 'repl_t'::regclass) || ' ' || count(*) FROM repl_t WHERE tenant_id IS NULL")"

qs -c "ALTER SYSTEM SET recovery_min_apply_delay = 0" -c "SELECT pg_reload_conf()" >/dev/null
expect "once the standby catches up, the backfill runs to the end" t \
    "$(until_true 60 "SELECT state = 'done' FROM tenancy.backfill_jobs WHERE relation = 'repl_t'::regclass")"
wait "$bf"; rc=$?; bf=
expect "the CALL succeeds" 0 "$rc"
standby_nulls=
for _ in $(seq 100); do
    standby_nulls=$(qs -c "SELECT count(*) FROM repl_t WHERE tenant_id IS NULL")
    [ "$standby_nulls" = 0 ] && break
    sleep 0.1
done
expect "every row is filled, and the standby has them" "0 0" \
    "$(q -c "SELECT count(*) FROM repl_t WHERE tenant_id IS NULL") $standby_nulls"
tap_end
