#!/usr/bin/env bash
# TAP (Citus): the staged modes (migrating, shadow, enforce) on distributed
# tables, shadow divergences counted on the workers and summed on the
# coordinator (tenancy.cluster_shadow_stats), and the unmigrated-row count
# (background worker, refresh_status) and verify()'s null_tenant and
# cross_tenant_reference on distributed tables, counted shard by shard
# (partitioned distributed tables too: each partition's shards); the
# workers' dropped shadow counts (a worker with tenancy.shadow_max_tables at
# 16) reported on the coordinator; migrating mode's legacy writes on the
# workers by the implicit tenant, whose key the coordinator copies there.
# A coordinator and two workers (test/lib/citus.bash), 8 shards a table.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"
source "$(dirname "${BASH_SOURCE[0]}")/lib/citus.bash"
citus_installed || citus_skip_all "no citus.so for PostgreSQL $(pg_config --version)"

plan 55
tap_tmpdir DIR citus_modes
citus_cluster_start "$DIR" "tenancy.worker_databases = 'citus'" "tenancy.worker_interval = 1" \
    "tenancy.worker_run_backfills = off"
# worker 2 counts at most 16 tables in shadow mode (the minimum); its
# stop ends its background workers (exit code 1), so its log starts afresh
cq 2 -c "ALTER SYSTEM SET tenancy.shadow_max_tables = 16" >/dev/null \
    && tap_run "$BINDIR/pg_ctl" -D "${CITUS_DATA[2]}" -w stop >/dev/null \
    && mv "${CITUS_DATA[2]}.log" "${CITUS_DATA[2]}.log.before-restart" \
    && tap_run "$BINDIR/pg_ctl" -D "${CITUS_DATA[2]}" -l "${CITUS_DATA[2]}.log" -w start >/dev/null \
    || bail "restarting worker 2 failed"
is "worker 2 runs with tenancy.shadow_max_tables = 16" "$(cq 2 -c "SHOW tenancy.shadow_max_tables")" "16"

A=00000000-0000-0000-0000-0000000000a1
B=00000000-0000-0000-0000-0000000000b2
# The hostile names: a table and a tenant column with quotes, a semicolon
# and the format() directives the shard-by-shard counts must not expand.
LEG='"leg%1$s ""acy"";"'
COL='"ten%s ""id"""'

cq 0 >/dev/null <<SQL || bail "setup failed"
SET client_min_messages = warning;
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('acme', 'Acme', '$A') IS NOT NULL;
SELECT tenancy.create_tenant('bolt', 'Bolt', '$B') IS NOT NULL;
CREATE ROLE cz_owner LOGIN;
CREATE ROLE cz_app LOGIN;
CREATE ROLE cz_reader LOGIN IN ROLE pg_read_all_stats;
GRANT USAGE ON SCHEMA public TO cz_owner, cz_app;
GRANT CREATE ON SCHEMA public TO cz_owner;
SET ROLE cz_owner;
-- distributed by the tenant column: six rows of acme, four of bolt
CREATE TABLE notes (id int, tenant_id uuid, body text, PRIMARY KEY (tenant_id, id));
-- distributed by id, mid-migration: three rows without a tenant
CREATE TABLE $LEG (id int PRIMARY KEY, $COL uuid);
-- a parent and its children, distributed by the parent's key, colocated
CREATE TABLE parents (id int PRIMARY KEY, tenant_id uuid);
CREATE TABLE children (id int, parent_id int REFERENCES parents (id), tenant_id uuid,
                       PRIMARY KEY (parent_id, id));
-- a reference table (one shard, a placement on every node) and a table
-- distributed by its own key referencing it
CREATE TABLE kinds (id int PRIMARY KEY, tenant_id uuid);
CREATE TABLE items (id int PRIMARY KEY, kind_id int, tenant_id uuid);
-- partitioned tables distributed by another key (Citus distributes each
-- partition too): rows without a tenant in both partitions, and a
-- partitioned child of parents, colocated
CREATE TABLE pleg (id int, region int, tenant_id uuid, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE pleg_1 PARTITION OF pleg FOR VALUES IN (1);
CREATE TABLE pleg_2 PARTITION OF pleg FOR VALUES IN (2);
CREATE TABLE pchildren (id int, parent_id int REFERENCES parents (id), region int, tenant_id uuid,
                        PRIMARY KEY (parent_id, id, region)) PARTITION BY LIST (region);
CREATE TABLE pchildren_1 PARTITION OF pchildren FOR VALUES IN (1);
CREATE TABLE pchildren_2 PARTITION OF pchildren FOR VALUES IN (2);
-- only acme's rows, distributed by id (on both workers)
CREATE TABLE solo (id int PRIMARY KEY, tenant_id uuid);
GRANT SELECT ON solo TO cz_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON notes, $LEG TO cz_app;
RESET ROLE;
SELECT create_distributed_table('notes', 'tenant_id');
SELECT create_distributed_table('$(printf '%s' "$LEG" | sed "s/'/''/g")', 'id');
SELECT create_distributed_table('parents', 'id');
SELECT create_distributed_table('children', 'parent_id', colocate_with => 'parents');
SELECT create_reference_table('kinds');
SELECT create_distributed_table('items', 'id');
ALTER TABLE items ADD FOREIGN KEY (kind_id) REFERENCES kinds (id);
SELECT create_distributed_table('pleg', 'id');
SELECT create_distributed_table('pchildren', 'parent_id', colocate_with => 'parents');
SELECT create_distributed_table('solo', 'id');
-- kinds 1..4 (one without a tenant); items 1..12, 3 of them of the other tenant
INSERT INTO kinds VALUES (1, '$A'), (2, '$B'), (3, '$A'), (4, NULL);
INSERT INTO items SELECT g, 1 + g % 3,
       CASE WHEN (g % 3 = 1) <> (g IN (2, 5, 9)) THEN '$B'::uuid ELSE '$A'::uuid END
  FROM generate_series(1, 12) g;
INSERT INTO notes SELECT g, CASE WHEN g <= 6 THEN '$A'::uuid ELSE '$B'::uuid END, 'n' || g
  FROM generate_series(1, 10) g;
INSERT INTO $LEG SELECT g, CASE WHEN g % 4 = 0 THEN NULL WHEN g % 2 = 0 THEN '$A'::uuid ELSE '$B'::uuid END
  FROM generate_series(1, 12) g;
INSERT INTO parents SELECT g, CASE WHEN g % 2 = 0 THEN '$A'::uuid ELSE '$B'::uuid END FROM generate_series(1, 8) g;
-- children 1..16, two per parent; children 3 and 10 carry the other tenant
INSERT INTO children SELECT g, (g + 1) / 2,
       CASE WHEN ((g + 1) / 2 % 2 = 0) <> (g IN (3, 10)) THEN '$A'::uuid ELSE '$B'::uuid END
  FROM generate_series(1, 16) g;
-- pleg 1..10: rows 1 and 3 (partition 2) and 4 (partition 1) without a tenant
INSERT INTO pleg SELECT g, 1 + g % 2, CASE WHEN g IN (1, 3, 4) THEN NULL WHEN g % 2 = 0 THEN '$A'::uuid ELSE '$B'::uuid END
  FROM generate_series(1, 10) g;
-- pchildren 1..8, one per parent, in both partitions; 2 and 7 carry the other tenant
INSERT INTO pchildren SELECT g, g, 1 + g % 2,
       CASE WHEN (g % 2 = 0) <> (g IN (2, 7)) THEN '$A'::uuid ELSE '$B'::uuid END
  FROM generate_series(1, 8) g;
INSERT INTO solo SELECT g, '$A' FROM generate_series(1, 8) g;
INSERT INTO tenancy.tables (relation, column_name)
VALUES ('notes', 'tenant_id'), ('$(printf '%s' "$LEG" | sed "s/'/''/g")', '$(printf '%s' "$COL" | sed 's/^"//; s/"$//; s/""/"/g')'),
       ('parents', 'tenant_id'), ('children', 'tenant_id'), ('kinds', 'tenant_id'), ('items', 'tenant_id'),
       ('pleg', 'tenant_id'), ('pchildren', 'tenant_id'), ('solo', 'tenant_id');
SET ROLE cz_owner;
SELECT tenancy.enable_rls('notes', mode => 'enforce') IS NOT NULL;
SELECT tenancy.enable_rls('pleg', mode => 'enforce') IS NOT NULL;
SELECT tenancy.enable_rls('pchildren', mode => 'enforce') IS NOT NULL;
SELECT tenancy.enable_rls('solo', mode => 'enforce') IS NOT NULL;
SELECT tenancy.enable_rls('parents', mode => 'enforce') IS NOT NULL;
SELECT tenancy.enable_rls('children', mode => 'enforce') IS NOT NULL;
RESET ROLE;
SELECT tenancy.enable_rls('kinds', mode => 'enforce') IS NOT NULL;
SELECT tenancy.enable_rls('items', mode => 'enforce') IS NOT NULL;
SET ROLE cz_owner;
RESET ROLE;
SQL
LEGQ=$(printf '%s' "$LEG" | sed "s/'/''/g")           # as a literal
COLN=$(printf '%s' "$COL" | sed 's/^"//; s/"$//; s/""/"/g')   # the bare name
COLNQ=$(printf '%s' "$COLN" | sed "s/'/''/g")

# As the application role, with tenant $1 carried to the workers; the rest
# of stdin runs in that transaction.
# tenancy.set_tenant() carries it to the workers.
as_app() {
    local t=$1
    { echo "SET ROLE cz_app; BEGIN;"
      [ -n "$t" ] && printf '%s\n' '\o /dev/null' "SELECT tenancy.set_tenant('$t');" '\o'
      cat; echo "COMMIT;"; } | cq 0 2>&1
}
# The policies of the shards of table $1 on the workers: how many shards
# carry each (policy name: the mode its USING expression is written for).
shard_quals() {
    local n
    for n in 1 2; do
        cq "$n" -c "SELECT p.polname || ':' || CASE WHEN e ~ 'shadow_read' THEN 'shadow'
                                                  WHEN e ~ 'current_tenant' THEN 'tenant'
                                                  WHEN e ~ 'IS NULL' THEN 'legacy' ELSE e END
                 FROM pg_dist_shard s
                 JOIN pg_policy p ON p.polrelid = to_regclass(shard_name(s.logicalrelid, s.shardid))
                 CROSS JOIN LATERAL pg_get_expr(p.polqual, p.polrelid) e
                WHERE s.logicalrelid = '$1'::regclass"
    done | LC_ALL=C sort | uniq -c | sed 's/^ *//' | paste -sd' '
}

# ---- enforce -----------------------------------------------------------------
is "enforce: the policy reached the 8 shards" "$(shard_quals notes)" "8 tenancy_policy:tenant"
is "enforce: acme sees its 6 rows (multi-shard count)" \
   "$(echo "SELECT count(*) FROM notes;" | as_app $A)" "6"
is "enforce: bolt sees its 4 rows, a router query by tenant finds them" \
   "$(echo "SELECT count(*) FROM notes WHERE tenant_id = '$B';" | as_app $B)" "4"
is "enforce: with no tenant nothing is visible" "$(echo "SELECT count(*) FROM notes;" | as_app "")" "0"
out=$(echo "\\set VERBOSITY sqlstate
INSERT INTO notes VALUES (100, '$B', 'x');" | as_app $A)
like "enforce: acme's write of a bolt row is refused (42501)" "$out" "42501"

# ---- shadow ------------------------------------------------------------------
cq 0 -c "SET ROLE cz_owner" -c "SELECT tenancy.set_mode('notes', 'shadow')" >/dev/null
ok $? "set_mode(shadow) on the coordinator"
is "shadow: every shard's policy switched" "$(shard_quals notes)" "8 tenancy_policy:shadow"
cq 0 -c "SELECT tenancy.reset_cluster_shadow_stats()" >/dev/null
is "shadow: acme sees all 10 rows (nothing hidden)" "$(echo "SELECT count(*) FROM notes;" | as_app $A)" "10"
is "shadow: acme's write of a bolt row goes through" \
   "$(echo "INSERT INTO notes VALUES (100, '$B', 'x') RETURNING id;" | as_app $A)" "100"
is "shadow: nothing counted on the coordinator itself (no shard there)" \
   "$(cq 0 -c "SELECT count(*) FROM tenancy.shadow_stats WHERE relation = 'notes'::regclass")" "0"
# 10 rows read (4 of bolt), 1 row written (bolt's), and that row read back
# by RETURNING: 12 checked, 5 enforce would hide, 1 it would refuse.
is "shadow: the workers' counts summed on the coordinator (checked, hidden, refused)" \
   "$(cq 0 -c "SELECT rows_checked, rows_hidden, writes_refused, last_divergence IS NOT NULL FROM tenancy.cluster_shadow_stats WHERE relation = 'notes'::regclass")" \
   "12|5|1|t"
per_node=$(for n in 1 2; do cq "$n" -c "SELECT coalesce(sum(rows_checked), 0) FROM tenancy.shadow_stats WHERE relation = 'notes'::regclass"; done | paste -sd+ | bc)
is "shadow: the sum is that of the workers' own tenancy.shadow_stats" "$per_node" "12"
is "shadow: a pg_read_all_stats member reads the cluster view" \
   "$(cq 0 -c "SET ROLE cz_reader" -c "SELECT rows_hidden FROM tenancy.cluster_shadow_stats WHERE relation = 'notes'::regclass")" "5"
# (verify() also runs, on worker connections that ran shadow_read(), the
# Citus code that registers its last relcache callbacks: with one slot per
# tenancy module that failed "out of relcache_callback_list slots")
is "shadow: verify() reports the 6 divergences of the workers, and the cluster-wide reset" \
   "$(cq 0 -c "SELECT status, rows_affected, fix FROM tenancy.verify('notes') WHERE check_name = 'shadow_divergence'")" \
   "failure|6|SELECT tenancy.reset_cluster_shadow_stats('public.notes');"
out=$(cq 0 -c "SET ROLE cz_app" -c "SELECT * FROM tenancy.cluster_shadow_stats" 2>&1)
like "shadow: the application role may not read it" "$out" "permission denied"
cq 0 -c "SELECT tenancy.reset_cluster_shadow_stats('notes')" >/dev/null
cq 1 -c "SET ROLE cz_app" \
     -c "SELECT tenancy.shadow_read(to_regclass(shard_name('notes'::regclass, min(shardid))), '$B'::uuid) FROM pg_dist_shard WHERE logicalrelid = 'notes'::regclass" \
     -c "SELECT tenancy.shadow_read('parents'::regclass, '$B'::uuid)" >/dev/null
is "shadow: called by hand with a shard, or a table in enforce mode, counts nothing" \
   "$(cq 0 -c "SELECT count(*) FROM tenancy.cluster_shadow_stats WHERE rows_checked > 0")" "0"

# ---- shadow: a worker's counters full -------------------------------------------
# 16 distributed tables of one shard in shadow mode fill worker 2's counters
# (read there by hand); solo, in shadow mode too, is then counted on worker
# 1 only: worker 2 drops its rows.
for i in $(seq 1 16); do
    echo "CREATE TABLE f$i (tenant_id uuid); SELECT create_distributed_table('f$i', 'tenant_id', shard_count => 1);
          ALTER TABLE f$i ENABLE ROW LEVEL SECURITY;
          CREATE POLICY tenancy_policy ON f$i USING (tenancy.shadow_read('f$i'::regclass, tenant_id));"
done | cq 0 >/dev/null || bail "creating the filler tables failed"
cq 0 -c "SET ROLE cz_owner" -c "SELECT tenancy.set_mode('solo', 'shadow')" >/dev/null
cq 0 -c "SELECT tenancy.reset_cluster_shadow_stats()" >/dev/null
cq 2 -c "SELECT count(tenancy.shadow_read(('f' || g)::regclass, NULL::uuid)) FROM generate_series(1, 16) g" >/dev/null
echo "SELECT count(*) FROM solo;" | as_app $A >/dev/null
w2=$(cq 2 -c "SELECT rows_dropped FROM tenancy.shadow_stats_dropped()")
is "dropped: the cluster form sums the workers' dropped rows (worker 2's, one node)" \
   "$(cq 0 -c "SELECT rows_dropped, nodes FROM tenancy.cluster_shadow_stats_dropped()")" "$w2|1"
ok "$([ "${w2:-0}" -gt 0 ] && echo 0 || echo 1)" "dropped: worker 2 did drop solo's rows ($w2)"
is "dropped: verify() on a table with no divergence counted says the cluster's counters are incomplete" \
   "$(cq 0 -c "SELECT status, rows_affected IS NULL, detail LIKE 'shadow counters incomplete: % rows of tables past tenancy.shadow_max_tables on 1 node%', fix FROM tenancy.verify('solo') WHERE check_name = 'shadow_divergence'")" \
   "failure|t|t|SELECT tenancy.reset_cluster_shadow_stats();"
cq 0 -c "SET ROLE cz_owner" -c "SELECT tenancy.set_mode('solo', 'enforce')" >/dev/null
cq 0 -c "SELECT tenancy.reset_cluster_shadow_stats()" >/dev/null

# ---- migrating ---------------------------------------------------------------
cq 0 -c "SET ROLE cz_owner" -c "SELECT tenancy.set_mode('notes', 'migrating')" >/dev/null
ok $? "set_mode(migrating) on a distributed table (its legacy policies propagate)"
is "migrating: the shards carry the policy and the three legacy policies" "$(shard_quals notes)" \
   "8 tenancy_policy:tenant 8 tenancy_policy_legacy_delete:legacy 8 tenancy_policy_legacy_read:legacy 8 tenancy_policy_legacy_update:legacy"
cq 0 -c "SELECT tenancy.reset_cluster_shadow_stats()" >/dev/null
echo "SELECT count(*) FROM notes;" | as_app $A >/dev/null
is "migrating: no shadow counting any more" \
   "$(cq 0 -c "SELECT coalesce(sum(rows_checked), 0) FROM tenancy.cluster_shadow_stats WHERE relation = 'notes'::regclass")" "0"
cq 0 -c "SET client_min_messages = warning" -c "SET ROLE cz_owner" -c "SELECT tenancy.enable_rls('$LEGQ', column_name => '$COLNQ', mode => 'migrating')" >/dev/null
ok $? "enable_rls(migrating) on a distributed table with hostile names"
is "migrating: acme reads its 3 rows and the 3 legacy rows" "$(echo "SELECT count(*) FROM $LEG;" | as_app $A)" "6"
is "migrating: bolt reads its 6 rows and the 3 legacy rows" "$(echo "SELECT count(*) FROM $LEG;" | as_app $B)" "9"
is "migrating: no implicit tenant, so nobody updates a legacy row" \
   "$(echo "UPDATE $LEG SET id = id WHERE $COL IS NULL RETURNING id;" | as_app $A | grep -c .)" "0"
# acme becomes the implicit tenant; cz_legacy is bound to it (no set_tenant())
cq 0 >/dev/null <<SQL || bail "binding cz_legacy failed"
SELECT tenancy.set_implicit_tenant('acme');
CREATE ROLE cz_legacy LOGIN;
GRANT SELECT, INSERT, UPDATE, DELETE ON $LEG TO cz_legacy;
SELECT tenancy.bind_role('cz_legacy', 'acme');
SQL
as_legacy() { psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${CITUS_PORT[0]}" -U cz_legacy -d "$CITUS_DB" 2>&1; }
is "implicit: the workers hold the coordinator's implicit tenant" \
   "$(for n in 1 2; do cq "$n" -c "SELECT tenant FROM tenancy.citus_implicit_tenant"; done | paste -sd' ')" "$A $A"
is "implicit: bolt updates no legacy row" \
   "$(echo "UPDATE $LEG SET $COL = NULL WHERE $COL IS NULL RETURNING id;" | as_app $B | grep -c .)" "0"
is "implicit: bolt deletes no legacy row" \
   "$(echo "DELETE FROM $LEG WHERE $COL IS NULL RETURNING id;" | as_app $B | grep -c .)" "0"
is "implicit: the bound legacy role updates the 3 legacy rows on the workers' shards" \
   "$(echo "UPDATE $LEG SET $COL = NULL WHERE $COL IS NULL RETURNING id;" | as_legacy | sort -n | paste -sd,)" "4,8,12"
is "implicit: and deletes one" \
   "$(echo "DELETE FROM $LEG WHERE id = 4 AND $COL IS NULL RETURNING id;" | as_legacy)" "4"
cq 0 -c "INSERT INTO $LEG VALUES (4, NULL)" >/dev/null
out=$(cq 1 -c "SET ROLE cz_app" -c "INSERT INTO tenancy.citus_implicit_tenant VALUES ('$B')" 2>&1)
like "implicit: a client on a worker cannot make itself the implicit tenant" "$out" "permission denied"
cq 1 -c "DELETE FROM tenancy.citus_implicit_tenant" >/dev/null
is "implicit: citus_context_problems() reports a worker whose copy differs" \
   "$(cq 0 -c "SELECT check_name, detail LIKE 'the implicit tenant is none on the worker, $A on the coordinator%' FROM tenancy.citus_context_problems()")" \
   "implicit_tenant|t"
cq 0 -c "UPDATE tenancy.tenants SET is_implicit = true WHERE is_implicit" >/dev/null
is "implicit: an UPDATE of the flag on the coordinator copies it again" \
   "$(cq 0 -c "SELECT count(*) FROM tenancy.citus_context_problems()"):$(cq 1 -c "SELECT tenant FROM tenancy.citus_implicit_tenant")" "0:$A"
cq 0 -c "SET ROLE cz_owner" -c "SELECT tenancy.set_mode('notes', 'enforce')" >/dev/null
is "enforce again: the legacy policies are gone from the shards" "$(shard_quals notes)" "8 tenancy_policy:tenant"
is "enforce again: acme sees its 6 rows" "$(echo "SELECT count(*) FROM notes;" | as_app $A)" "6"

# ---- unmigrated rows: the background worker and refresh_status ----------------
counted() { [ "$(cq 0 -c "SELECT unmigrated || '/' || total_rows || '/' || method FROM tenancy.migration_status WHERE relation = '$LEGQ'::regclass")" = "3/12/exact" ]; }
wait_for 30 counted
ok $? "the coordinator's background worker counts the 3 unmigrated of 12 rows, through the shards"
is "refresh_status: the same, exact" \
   "$(cq 0 -c "SELECT unmigrated, total_rows, method FROM tenancy.refresh_status('$LEGQ')")" "3|12|exact"
pcounted() { [ "$(cq 0 -c "SELECT unmigrated || '/' || total_rows || '/' || method FROM tenancy.migration_status WHERE relation = 'pleg'::regclass")" = "3/10/exact" ]; }
wait_for 30 pcounted
ok $? "partitioned: the background worker counts the 3 unmigrated of 10 rows, through the partitions' shards"
# refresh_status() gives up (lock timeout) while the background worker
# counts the same table, shard by shard: a few attempts
refresh() { local i out; for i in 1 2 3 4 5 6 7 8 9 10; do
    out=$(cq 0 -c "SELECT unmigrated, total_rows, method FROM tenancy.refresh_status('$1')" 2>/dev/null) \
        && { echo "$out"; return 0; }; sleep 0.5; done; return 1; }
is "partitioned: refresh_status, exact" "$(refresh pleg)" "3|10|exact"
is "partitioned: each partition counted through its own shards, exact" \
   "$(cq 0 -c "SELECT string_agg(relation::text || '=' || unmigrated || '/' || total_rows || '/' || method, ',' ORDER BY relation::text) FROM tenancy.migration_status_partitions WHERE parent = 'pleg'::regclass")" \
   "pleg_1=1/5/exact,pleg_2=2/5/exact"
is "refresh_status: a table distributed by its tenant column has none (catalog proof)" \
   "$(cq 0 -c "SELECT unmigrated, method FROM tenancy.refresh_status('notes')")" "0|proof"
sleep 2   # two more cycles of the workers' background workers
is "the workers' background workers record nothing: their shards are no registered tables" \
   "$(for n in 1 2; do cq "$n" -c "SELECT count(*) FROM tenancy.migration_status"; done | paste -sd' ')" "0 0"
# (a lock timeout behind set_mode()'s DDL is the worker yielding, by design)
is "no background worker failed on any node" \
   "$(cat "${CITUS_DATA[0]}.log" "${CITUS_DATA[1]}.log" "${CITUS_DATA[2]}.log" \
        | awk 'match($0, /\[[0-9]+\]/) { pid = substr($0, RSTART, RLENGTH) }
               / (ERROR|WARNING|FATAL): / { err[pid] = ($0 ~ /lock timeout/) ? "" : $0; next }
               / CONTEXT: .*tenancy (worker|launcher)/ && err[pid] != "" { n++; err[pid] = "" }
               /background worker "tenancy.*exited with exit code [1-9]/ { n++ }
               { if ($0 !~ / (CONTEXT|DETAIL|HINT|STATEMENT): /) err[pid] = "" }
               END { print n + 0 }')" "0"
is "the coordinator's background worker logged its count of the table" \
   "$(grep -A1 'has 3 rows with "ten%s ""id""" NULL' "${CITUS_DATA[0]}.log" | grep -c 'CONTEXT:  tenancy worker counting')" "1"

# ---- verify() -------------------------------------------------------------------
is "verify: null_tenant counts the 3 rows without a tenant under FORCE ROW LEVEL SECURITY" \
   "$(cq 0 -c "SELECT status, rows_affected FROM tenancy.verify('$LEGQ') WHERE check_name = 'null_tenant'")" "failure|3"
is "partitioned: verify's null_tenant counts the 3 rows of both partitions" \
   "$(cq 0 -c "SELECT status, rows_affected FROM tenancy.verify('pleg') WHERE check_name = 'null_tenant'")" "failure|3"
is "partitioned: verify's cross_tenant_reference finds the 2 children of another tenant's parent" \
   "$(cq 0 -c "SELECT relation, status, rows_affected FROM tenancy.verify('pchildren') WHERE check_name = 'cross_tenant_reference'")" \
   "pchildren|failure|2"
is "verify: max_rows bounds the count (at least 2)" \
   "$(cq 0 -c "SELECT rows_affected, detail LIKE 'at least 2 %' FROM tenancy.verify('$LEGQ', max_rows => 2) WHERE check_name = 'null_tenant'")" "2|t"
is "verify: cross_tenant_reference finds the 2 children of another tenant's parent, shard by shard" \
   "$(cq 0 -c "SELECT relation, status, rows_affected FROM tenancy.verify('children') WHERE check_name = 'cross_tenant_reference'")" \
   "children|failure|2"
is "verify: cross_tenant_reference to a reference table, each shard joined with the placement on its node" \
   "$(cq 0 -c "SELECT relation, status, rows_affected FROM tenancy.verify('items') WHERE check_name = 'cross_tenant_reference'")" \
   "items|failure|3"
is "verify: a reference table's row without a tenant counts once, not once per placement" \
   "$(cq 0 -c "SELECT status, rows_affected FROM tenancy.verify('kinds') WHERE check_name = 'null_tenant'")" "failure|1"
is "refresh_status: the reference table, once per shard" \
   "$(cq 0 -c "SELECT unmigrated, total_rows, method FROM tenancy.refresh_status('kinds')")" "1|4|exact"
cq 0 -c "UPDATE children SET tenant_id = p.tenant_id FROM parents p WHERE p.id = children.parent_id AND children.tenant_id <> p.tenant_id" >/dev/null
is "verify: after the fix, every reference within one tenant" \
   "$(cq 0 -c "SELECT status, rows_affected FROM tenancy.verify('children') WHERE check_name = 'cross_tenant_reference'")" "ok|0"
[ -n "${CZ_KEEP_LOGS:-}" ] && cp "${CITUS_DATA[0]}.log" "${CITUS_DATA[1]}.log" "${CITUS_DATA[2]}.log" "$CZ_KEEP_LOGS"/
tap_end
