#!/usr/bin/env bash
# enforce_not_null() under a competing lock: each ALTER waits at most
# lock_timeout, retries with backoff, and gives up with 55P03 after
# max_attempts having changed nothing; once the lock goes away it finishes.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"
q() { psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
plan 6

q <<'SQL'
CREATE EXTENSION tenancy;
CREATE TABLE ready_locks_t (id int PRIMARY KEY, tenant_id uuid);
INSERT INTO ready_locks_t VALUES (1, '11111111-1111-1111-1111-111111111111');
INSERT INTO tenancy.tables (relation) VALUES ('ready_locks_t');
SQL

# hold ACCESS SHARE (a long-running reader) for $1 seconds
hold() {
    PGAPPNAME=ready_locks_holder psql -X -q -c "BEGIN; SELECT count(*) FROM ready_locks_t; SELECT pg_sleep($1); COMMIT;" >/dev/null 2>&1 &
    holder=$!
    for _ in $(seq 50); do
        [ "$(q -c "SELECT count(*) FROM pg_locks WHERE relation = 'ready_locks_t'::regclass AND pid <> pg_backend_pid()")" -gt 0 ] && return
        sleep 0.1
    done
}

hold 5
out=$(psql -X -q -v VERBOSITY=verbose -c "CALL tenancy.enforce_not_null('ready_locks_t', lock_timeout => '100ms', max_attempts => 2)" 2>&1)
is "gives up with 55P03 while a reader holds the table" "$(echo "$out" | grep -o '55P03' | head -1)" "55P03"
is "the error says which step did not run" "$(echo "$out" | grep -c 'Step 1 of 4 (add_check) did not run')" "1"
is "nothing was added" "$(q -c "SELECT count(*) FROM pg_constraint WHERE conrelid = 'ready_locks_t'::regclass AND contype = 'c'")" "0"
is "nothing was recorded" "$(q -c "SELECT count(*) FROM tenancy.contract_log")" "0"
q -c "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity WHERE application_name = 'ready_locks_holder'" >/dev/null
wait "$holder" 2>/dev/null

hold 1
q -c "CALL tenancy.enforce_not_null('ready_locks_t', lock_timeout => '100ms', max_attempts => 20)" 2>&1
is "retries until the reader is gone, then finishes" \
   "$(q -c "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'ready_locks_t'::regclass AND attname = 'tenant_id'")" "t"
is "every step is recorded once" \
   "$(q -c "SELECT string_agg(step, ',' ORDER BY id) FROM tenancy.contract_log")" "add_check,validate_check,set_not_null,drop_check"
wait "$holder" 2>/dev/null

q -c "DROP EXTENSION tenancy CASCADE; DROP TABLE ready_locks_t;"
tap_end
