#!/usr/bin/env bash
# tenancy.wal_flush_behind(), through which each row of a backfill batch
# passes its value, on a server whose WAL writer would otherwise sleep 10 s
# between flushes (wal_writer_delay = 10s): WAL a transaction has inserted
# but not committed is flushed within a second of the call, and during a
# backfill batch that is still running, the rows it has already written
# are flushed.  Without the wake-up the flush position would stay behind.
# Starts its own server (make test's cluster has the default WAL writer).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"
tap_tmpdir DIR bf-wal
PORT=$(tap_free_port)
bf=
tap_at_exit 'kill "$bf" 2>/dev/null'

plan 7
own_server_start "$DIR/data" "$PORT" "$DIR" "autovacuum = off" "wal_writer_delay = '10s'" \
    "wal_writer_flush_after = '1MB'" "wal_buffers = '64MB'"

q() { psql_at "$DIR" "$PORT" -d postgres "$@"; }

q -c "SET client_min_messages = warning" -c "CREATE EXTENSION tenancy" \
  -c "SELECT tenancy.create_tenant('acme', 'Acme', '11111111-1111-1111-1111-111111111111')" \
  -c "CREATE TABLE wal_pad (v text)" \
  -c "CREATE TABLE wal_t (id int PRIMARY KEY, pad text, tenant_id uuid)" \
  -c "INSERT INTO wal_t SELECT g, repeat('x', 200) FROM generate_series(1, 40000) g" \
  -c "VACUUM (FREEZE) wal_t" -c "CHECKPOINT" >/dev/null || bail "setup failed"

# One open transaction: insert ~3 MB of WAL, then see how far the flush
# position gets in 0.5 s without the call (the control) and in up to 2 s
# after it.  The WAL writer writes at most up to the end of its ring of WAL
# buffers each time it wakes, so a second call after another ~1.2 MB covers
# a range that happens to wrap around it.  It may also happen to wake on
# its own (its 10 s timer) in the control window: the scenario is tried up
# to three times.
scenario() {
    q <<'SQL'
BEGIN;
INSERT INTO wal_pad SELECT repeat('y', 1000) FROM generate_series(1, 3000);
SELECT set_config('tn.ins', pg_current_wal_insert_lsn()::text, false) AS ins \gset
SELECT pg_sleep(0.5) \g /dev/null
SELECT pg_wal_lsn_diff(:'ins', pg_current_wal_flush_lsn()) > 1048576 AS behind \gset
SELECT tenancy.wal_flush_behind(7) AS v \gset
INSERT INTO wal_pad SELECT repeat('y', 1000) FROM generate_series(1, 1200);
SELECT tenancy.wal_flush_behind(8) \g /dev/null
DO $$
BEGIN
    FOR i IN 1..100 LOOP
        EXIT WHEN pg_wal_lsn_diff(current_setting('tn.ins')::pg_lsn, pg_current_wal_flush_lsn()) < 8192;
        PERFORM pg_sleep(0.02);
    END LOOP;
END $$;
SELECT :'behind', :'v', pg_wal_lsn_diff(:'ins', pg_current_wal_flush_lsn()) < 8192;
COMMIT;
SQL
}
for _ in 1 2 3; do
    res=$(scenario 2>&1)
    [ "$res" = "t|7|t" ] && break
done
expect "without the call, the WAL writer leaves over 1 MB unflushed for 0.5 s" t "$(cut -d'|' -f1 <<<"$res")"
expect "wal_flush_behind() returns its argument" 7 "$(cut -d'|' -f2 <<<"$res")"
expect "after the calls, the transaction's WAL is flushed before it commits (to the last whole page)" t "$(cut -d'|' -f3 <<<"$res")"

# A backfill batch that stalls 3 s at row 30000 (its source sleeps there):
# while it is stalled, the WAL of the rows it has already updated is
# flushed, to within two wake-up steps (1 MB and 64 kB each: the last one
# may have stopped at the end of the WAL buffer ring), although nothing has
# committed.  Without the wake-ups it would be about 9 MB behind.
q -c "SELECT pg_sleep(0.1)" >/dev/null
psql -X -q -h "$DIR" -p "$PORT" -U "$TAP_USER" -d postgres -c "CALL tenancy.backfill('wal_t', batch_size => 40000, max_batch_size => 40000,
        statement_timeout => '20s',
        source => '(SELECT tenancy.tenant_key(''acme'')::uuid FROM pg_sleep(CASE WHEN t.id = 30000 THEN 3 ELSE 0 END))')" \
    >"$DIR/backfill.log" 2>&1 &
bf=$!
stalled=f
for _ in $(seq 50); do
    if [ "$(q -c "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep' AND query LIKE 'CALL tenancy.backfill%'")" = 1 ]; then
        stalled=t; break
    fi
    sleep 0.1
done
sleep 0.5
behind=$(q -c "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), pg_current_wal_flush_lsn())")
expect "the batch is stalled mid-statement" t "$stalled"
expect "its WAL so far is flushed to within two steps (behind: $behind bytes)" t "$([ "${behind:-99999999}" -le 2300000 ] && echo t || echo f)"
wait "$bf"; rc=$?; bf=
expect "the backfill finishes" 0 "$rc"
expect "every row has its tenant" 0 "$(q -c "SELECT count(*) FROM wal_t WHERE tenant_id IS DISTINCT FROM '11111111-1111-1111-1111-111111111111'")"
tap_end
