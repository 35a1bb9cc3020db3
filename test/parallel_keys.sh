#!/usr/bin/env bash
# TAP: parallel queries with the key type set for the whole cluster (issue
# 14, item 1), on a server of its own: tenancy.tenant_type in
# postgresql.conf (bigint), then with ALTER SYSTEM (text), each reloaded
# without a restart.  Parallel workers restore tenancy.tenant_id before
# tenancy.tenant_type; the counts per tenant must be those of the leader.
# The database- and role-level settings are in pg_regress parallel_keys.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"
tap_tmpdir DIR parallel-keys
port=$(tap_free_port)
q() { psql_at "$DIR" "$port" "$@" 2>&1; }

# setup DB TYPE K1 K2: the extension, a plain, an RLS and a partitioned table.
setup() {
    q -d postgres -c "CREATE DATABASE $1" >/dev/null
    q -d "$1" -v keytype="$2" -v k1="$3" -v k2="$4" >/dev/null <<'SQL'
CREATE EXTENSION tenancy;
CREATE TABLE par_plain (id int, tenant_id :keytype, v int);
INSERT INTO par_plain SELECT g, CAST(CASE WHEN g % 3 = 0 THEN :'k1' ELSE :'k2' END AS :keytype), g
  FROM generate_series(1, 30000) g;
CREATE INDEX ON par_plain (id);
CREATE TABLE par_rls (LIKE par_plain);
INSERT INTO par_rls SELECT * FROM par_plain;
CREATE INDEX ON par_rls (id);
CREATE TABLE par_part (LIKE par_plain) PARTITION BY RANGE (id);
CREATE TABLE par_part_1 PARTITION OF par_part FOR VALUES FROM (1) TO (15001);
CREATE TABLE par_part_2 PARTITION OF par_part FOR VALUES FROM (15001) TO (30001);
INSERT INTO par_part SELECT * FROM par_plain;
SET client_min_messages = warning;
SELECT tenancy.enable_rls('par_rls');
GRANT SELECT ON par_plain, par_rls, par_part TO par_app;
ANALYZE par_plain, par_rls, par_part;
SELECT tenancy.create_tenant('par-one', 'One', :'k1'), tenancy.create_tenant('par-two', 'Two', :'k2');
SQL
}
# counts DB ROLE KEY ACCESSOR: plain (parallel seq scan), part (parallel
# append), rls (parallel seq scan under RLS), idx (parallel index scan under RLS).
counts() {
    q -d "$1" -F '|' <<SQL
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET min_parallel_index_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
SET parallel_leader_participation = off;
BEGIN;
SET LOCAL ROLE $2;
SELECT tenancy.set_tenant('$3') IS NULL;
SET LOCAL enable_indexscan = off;
SET LOCAL enable_bitmapscan = off;
SELECT (SELECT count(*) FROM par_plain WHERE tenant_id = $4),
       (SELECT count(*) FROM par_part WHERE tenant_id = $4),
       (SELECT count(*) FROM par_rls);
SET LOCAL enable_indexscan = on;
SET LOCAL enable_seqscan = off;
SELECT count(*) FROM par_rls WHERE id > 0;
COMMIT;
SQL
}
explain_count() {
    q -d "$1" <<SQL | grep -c "$2"
SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0; SET min_parallel_index_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
SET enable_indexscan = off; SET enable_bitmapscan = off;
EXPLAIN (COSTS OFF) SELECT count(*) FROM par_plain WHERE tenant_id = $3;
EXPLAIN (COSTS OFF) SELECT count(*) FROM par_part WHERE tenant_id = $3;
SET enable_indexscan = on; SET enable_seqscan = off;
EXPLAIN (COSTS OFF) SELECT count(*) FROM par_rls WHERE id > 0;
SQL
}

plan 10
own_server_start "$DIR/data" "$port" "$DIR" "shared_preload_libraries = 'tenancy'" \
    "tenancy.worker_enabled = off" "max_worker_processes = 8" "max_parallel_workers = 8"
q -d postgres -c "CREATE ROLE par_app" >/dev/null

# bigint in postgresql.conf, reloaded.
echo "tenancy.tenant_type = 'bigint'" | tap_run tee -a "$DIR/data/postgresql.conf" >/dev/null
own_server_reload "$DIR/data"
sleep 1
expect "postgresql.conf: tenancy.tenant_type = bigint after a reload" "bigint" \
    "$(q -d postgres -c 'SHOW tenancy.tenant_type')"
setup par_bigint bigint 1 12
expect "bigint: the plans have parallel seq scans, a parallel append, a parallel index scan" "5" \
    "$(explain_count par_bigint 'Parallel' 'tenancy.current_tenant_bigint()')"
expect "bigint, superuser, tenant 1: no error, counts of tenant 1 (RLS not for superusers)" \
    "f
10000|10000|30000
30000" "$(counts par_bigint postgres 1 'tenancy.current_tenant_bigint()')"
expect "bigint, application role, tenant 1" "f
10000|10000|10000
10000" "$(counts par_bigint par_app 1 'tenancy.current_tenant_bigint()')"
expect "bigint, application role, tenant 12" "f
20000|20000|20000
20000" "$(counts par_bigint par_app 12 'tenancy.current_tenant_bigint()')"

# text with ALTER SYSTEM (postgresql.auto.conf), reloaded.
q -d postgres -c "ALTER SYSTEM SET tenancy.tenant_type = 'text'" -c "SELECT pg_reload_conf()" >/dev/null
sleep 1
expect "ALTER SYSTEM: tenancy.tenant_type = text after a reload" "text" \
    "$(q -d postgres -c 'SHOW tenancy.tenant_type')"
setup par_text text 'store 1' 'Store/12'
expect "text: the plans have parallel seq scans, a parallel append, a parallel index scan" "5" \
    "$(explain_count par_text 'Parallel' 'tenancy.current_tenant_text()')"
expect "text, superuser, tenant 'store 1'" "f
10000|10000|30000
30000" "$(counts par_text postgres 'store 1' 'tenancy.current_tenant_text()')"
expect "text, application role, tenant 'Store/12'" "f
20000|20000|20000
20000" "$(counts par_text par_app 'Store/12' 'tenancy.current_tenant_text()')"
expect "the server log has no invalid tenant key" "0" \
    "$(grep -c 'invalid tenant key' "$DIR/data.log")"
tap_end
