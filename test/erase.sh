#!/usr/bin/env bash
# test/erase.sh: an erasure killed mid-way (pg_terminate_backend of the
# backend running CALL tenancy.erase_tenant()) has committed its finished
# batches, shows as interrupted, and a second CALL resumes it to the end:
# nothing of the tenant left, the other tenant's rows untouched (checksums),
# the count of deleted rows exact; while one runs, a second erasure of the
# same tenant is refused (55006).
#
# Shell TAP, run by `prove -e bash` from scripts/test.sh, on the harness
# cluster.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"

PLAN=9
DB=tenancy_erase
A=e5000000-0000-4000-8000-0000000000a1
B=e5000000-0000-4000-8000-0000000000b2
q() { psql -X -q -At -v ON_ERROR_STOP=1 -d "$DB" "$@" </dev/null; }

admin postgres -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB" >/dev/null || bail "cannot create $DB"
tap_at_exit "admin postgres -c 'DROP DATABASE IF EXISTS $DB' >/dev/null 2>&1"
psql -X -q -v ON_ERROR_STOP=1 -d "$DB" >/dev/null <<SQL || bail "cannot set up $DB"
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('old', 'Old', 'e5000000-0000-4000-8000-0000000000c3');
SELECT tenancy.set_implicit_tenant('old');
SELECT tenancy.create_tenant('gone', 'Departing', '$A');
SELECT tenancy.create_tenant('stays', 'Staying', '$B');
CREATE TABLE accounts (id int PRIMARY KEY, tenant_id uuid, name text);
CREATE TABLE notes (id int PRIMARY KEY, account_id int REFERENCES accounts, tenant_id uuid, body text);
SELECT tenancy.add_tenant_column('accounts'), tenancy.add_tenant_column('notes');
INSERT INTO accounts SELECT i, CASE WHEN i % 4 = 0 THEN '$B'::uuid ELSE '$A'::uuid END, 'a' || i FROM generate_series(1, 2000) i;
INSERT INTO notes SELECT i, 1 + i % 2000, a.tenant_id, 'n' || i FROM generate_series(1, 6000) i JOIN accounts a ON a.id = 1 + i % 2000;
CREATE INDEX ON accounts (tenant_id); CREATE INDEX ON notes (tenant_id);
SELECT tenancy.suspend_tenant('gone');
SQL
before=$(q -c "SELECT string_agg(relation::text || ':' || row_count || ':' || checksum, ' ' ORDER BY 1) FROM tenancy.tenant_checksums('stays')")
gone_rows=$(q -c "SELECT sum(row_count) FROM tenancy.tenant_checksums('gone')")

plan $PLAN
# Small batches with a pause: slow enough to be killed mid-way.
psql -X -q -d "$DB" -c "SET application_name = 'erase-run'" \
    -c "CALL tenancy.erase_tenant('gone', batch_size => 50, min_batch_size => 50, max_batch_size => 50, pause => '50ms')" \
    </dev/null >"$TN_WORK/erase-runner.out" 2>&1 &
runner=$!
batches_done() { test "$(q -c "SELECT batches >= 5 FROM tenancy.tenant_erasures")" = t; }
wait_for 30 batches_done
ok_file $? "the erasure runs in committed batches (progress visible from another session)" "$TN_WORK/erase-runner.out"
out=$(psql -X -q -At -d "$DB" -v VERBOSITY=verbose -c "CALL tenancy.erase_tenant('gone')" </dev/null 2>&1)
like "a second erasure of the tenant is refused while one runs" "$out" "ERROR:  55006: tenant \"gone\" is being erased by process [0-9]+"
q -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'erase-run'" >/dev/null
wait "$runner"
runner_gone() { test "$(q -c "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'erase-run'")" = 0; }
wait_for 10 runner_gone \
    || bail "the killed backend did not go away"
state=$(q -c "SELECT state, interrupted FROM tenancy.erase_progress ORDER BY ord LIMIT 1")
is "killed: left running, shown as interrupted" "$state" "running|t"
done_rows=$(q -c "SELECT rows_deleted FROM tenancy.tenant_erasures")
left=$(q -c "SELECT sum(row_count) FROM tenancy.tenant_checksums('gone')")
is "its committed batches stay done: deleted + left = all of the tenant's rows" "$((done_rows + left))" "$gone_rows"
isnt "and part of the rows are left" "$left" 0

q -c "CALL tenancy.erase_tenant('gone', batch_size => 500)" 2>&1
ok $? "a second CALL resumes it"
is "to the end: recorded done, by whom" "$(q -c "SELECT state, finished_by = current_user, resumed_at IS NOT NULL, rows_deleted FROM tenancy.tenant_erasures")" "done|t|t|$gone_rows"
is "nothing of the tenant is left" "$(q -c "SELECT sum(row_count) FROM tenancy.tenant_checksums('gone')")" 0
is "the other tenant's rows are untouched" \
    "$(q -c "SELECT string_agg(relation::text || ':' || row_count || ':' || checksum, ' ' ORDER BY 1) FROM tenancy.tenant_checksums('stays')")" "$before"

tap_end
