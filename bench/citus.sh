#!/usr/bin/env bash
# bench/citus.sh: one tenant, one shard on Citus (prune.c).
#
# Its own cluster: a coordinator and two workers (test/lib/citus.bash),
# 8 shards.  Three colocated distributed tables holding the same rows,
# 100 tenants x ROWS_PER_TENANT rows:
#   items_plain   no row security, queried with WHERE tenant_id = <literal>
#   items_rls     tenancy.enable_rls(): the extension's policy, no tenant filter
#   items_legacy  the common policy tenant_id = current_setting('app.tenant')::uuid
# Each transaction sets the tenant with SET LOCAL and
# citus.propagate_set_commands = 'local' (until set_tenant propagates (cz-ctx)).
# Shapes: pk (lookup by id), agg (count and sum over the tenant's rows).
# Prints
#   1. Task Count of each shape under each arm (EXPLAIN), target 1 under the
#      policy; and under the policy with tenancy.tenant_pruning = off;
#   2. executor time on the coordinator, min and median of N alternating
#      runs in one session (plpgsql, clock_timestamp() around EXECUTE):
#      policy / explicit literal, target <= 1.05;
#   3. TPS, pgbench -M simple -c 1, ROUNDS alternating rounds of DURATION
#      seconds: policy / explicit literal, beside an A/A baseline (the
#      explicit arm against itself) that shows the noise.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh

PER_TENANT=${CITUS_BENCH_ROWS_PER_TENANT:-2000}
DURATION=${CITUS_BENCH_DURATION:-3}
ROUNDS=${CITUS_BENCH_ROUNDS:-5}
EXEC_N=${CITUS_BENCH_EXEC_RUNS:-200}

tn_build_install
BINDIR=$TN_BINDIR TN_BINDIR=$TN_BINDIR
source test/lib/tap.bash
source test/lib/citus.bash
citus_installed || { echo "citus bench: SKIP (Citus is not installed: as root run ../shared/citus/install.sh)"; exit 0; }
DIR=$(tn_workdir bench-citus)
tap_at_exit "rm -rf '$DIR'"
echo "citus bench: 3 nodes, 8 shards, 100 tenants x $PER_TENANT rows; exec: $EXEC_N alternating runs; tps: ${DURATION}s x $ROUNDS rounds per arm"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores (shared with other work: figures are noisy)"
t0=$(date +%s)
citus_cluster_start "$DIR" "jit = off" "synchronous_commit = off" "autovacuum = off" \
    "max_parallel_workers_per_gather = 0" >/dev/null
cq 0 >/dev/null <<SQL
SET client_min_messages = warning;
CREATE EXTENSION tenancy;
CREATE ROLE bench_app LOGIN;
SELECT count(tenancy.create_tenant('t' || n, 'Tenant ' || n, '00000000-0000-0000-0000-' || lpad(n::text, 12, '0')))
  FROM generate_series(1, 100) n;
CREATE TABLE items_plain (tenant_id uuid NOT NULL, id bigint NOT NULL, amount int NOT NULL, PRIMARY KEY (tenant_id, id));
CREATE TABLE items_rls (LIKE items_plain INCLUDING ALL);
CREATE TABLE items_legacy (LIKE items_plain INCLUDING ALL);
SELECT create_distributed_table('items_plain', 'tenant_id');
SELECT create_distributed_table('items_rls', 'tenant_id', colocate_with => 'items_plain');
SELECT create_distributed_table('items_legacy', 'tenant_id', colocate_with => 'items_plain');
INSERT INTO items_plain
SELECT ('00000000-0000-0000-0000-' || lpad((i % 100 + 1)::text, 12, '0'))::uuid, i, (i * 7919 % 1000)::int
  FROM generate_series(1, 100 * $PER_TENANT) i;
INSERT INTO items_rls SELECT * FROM items_plain;
INSERT INTO items_legacy SELECT * FROM items_plain;
GRANT SELECT ON items_plain, items_rls, items_legacy TO bench_app;
SELECT tenancy.enable_rls('items_rls');
ALTER TABLE items_legacy ENABLE ROW LEVEL SECURITY;
CREATE POLICY legacy_tenant ON items_legacy USING (tenant_id = current_setting('app.tenant', true)::uuid);
VACUUM ANALYZE items_plain; VACUUM ANALYZE items_rls; VACUUM ANALYZE items_legacy;
SQL
echo "setup: $(( $(date +%s) - t0 ))s"
KEY=00000000-0000-0000-0000-000000000007

# --- 1. tasks ---------------------------------------------------------------
tasks() {   # tasks TABLE WHERE [SETTING]
    cq 0 <<SQL | sed -n 's/.*Task Count: \([0-9]*\).*/\1/p' | head -1
SET ROLE bench_app;
BEGIN;
SET LOCAL citus.propagate_set_commands = 'local';
SET LOCAL tenancy.tenant_id = '$KEY';
SET LOCAL app.tenant = '$KEY';
${3:-}
EXPLAIN (COSTS OFF) SELECT $4 FROM $1 $2;
COMMIT;
SQL
}
echo
echo "tasks per query (8 shards)          pk   agg"
printf "%-34s %4s %5s\n" "explicit WHERE tenant_id = literal" \
    "$(tasks items_plain "WHERE tenant_id = '$KEY' AND id = 7" "" "amount")" \
    "$(tasks items_plain "WHERE tenant_id = '$KEY'" "" "count(*), sum(amount)")"
printf "%-34s %4s %5s\n" "tenancy policy" \
    "$(tasks items_rls "WHERE id = 7" "" "amount")" \
    "$(tasks items_rls "" "" "count(*), sum(amount)")"
printf "%-34s %4s %5s\n" "tenancy policy, tenant_pruning=off" \
    "$(tasks items_rls "WHERE id = 7" "SET LOCAL tenancy.tenant_pruning = off;" "amount")" \
    "$(tasks items_rls "" "SET LOCAL tenancy.tenant_pruning = off;" "count(*), sum(amount)")"
printf "%-34s %4s %5s\n" "current_setting() policy" \
    "$(tasks items_legacy "WHERE id = 7" "" "amount")" \
    "$(tasks items_legacy "" "" "count(*), sum(amount)")"

# --- 2. executor time ---------------------------------------------------------
echo
echo "executor time on the coordinator, $EXEC_N alternating runs in one session"
echo "shape  arm                    min (ms)  median (ms)"
cq 0 <<SQL
SET client_min_messages = warning;
CREATE TEMP TABLE res (shape text, arm text, ms float8);
GRANT ALL ON res TO bench_app;
SET ROLE bench_app;
BEGIN;
DO \$\$
DECLARE t0 timestamptz; c bigint; s bigint; k text; id bigint;
BEGIN
    FOR i IN 1 .. $EXEC_N LOOP
        k := '00000000-0000-0000-0000-' || lpad((i % 100 + 1)::text, 12, '0');
        id := (i % 100) + 100 * (1 + i % ($PER_TENANT - 1));   -- a row of tenant k
        -- until set_tenant propagates (cz-ctx)
        SET LOCAL citus.propagate_set_commands = 'local';
        EXECUTE format('SET LOCAL tenancy.tenant_id = %L', k);
        t0 := clock_timestamp();
        EXECUTE format('SELECT count(*), sum(amount) FROM items_plain WHERE tenant_id = %L', k) INTO c, s;
        INSERT INTO res VALUES ('agg', 'explicit', extract(epoch FROM clock_timestamp() - t0) * 1000);
        t0 := clock_timestamp();
        EXECUTE 'SELECT count(*), sum(amount) FROM items_rls' INTO c, s;
        INSERT INTO res VALUES ('agg', 'policy', extract(epoch FROM clock_timestamp() - t0) * 1000);
        t0 := clock_timestamp();
        EXECUTE format('SELECT amount FROM items_plain WHERE tenant_id = %L AND id = %s', k, id) INTO c;
        INSERT INTO res VALUES ('pk', 'explicit', extract(epoch FROM clock_timestamp() - t0) * 1000);
        t0 := clock_timestamp();
        EXECUTE format('SELECT amount FROM items_rls WHERE id = %s', id) INTO c;
        INSERT INTO res VALUES ('pk', 'policy', extract(epoch FROM clock_timestamp() - t0) * 1000);
        -- the policy without pruning: every shard
        SET LOCAL tenancy.tenant_pruning = off;
        t0 := clock_timestamp();
        EXECUTE 'SELECT count(*), sum(amount) FROM items_rls' INTO c, s;
        INSERT INTO res VALUES ('agg', 'policy, pruning off', extract(epoch FROM clock_timestamp() - t0) * 1000);
        t0 := clock_timestamp();
        EXECUTE format('SELECT amount FROM items_rls WHERE id = %s', id) INTO c;
        INSERT INTO res VALUES ('pk', 'policy, pruning off', extract(epoch FROM clock_timestamp() - t0) * 1000);
        SET LOCAL tenancy.tenant_pruning = auto;
    END LOOP;
END \$\$;
COMMIT;
SELECT format('%-6s %-22s %8s %12s', shape, arm, to_char(min(ms), 'FM990.000'),
              to_char(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), 'FM990.000'))
  FROM res GROUP BY shape, arm ORDER BY shape, arm;
SELECT format('%-6s policy/explicit        %8s %12s', shape,
              to_char(min(ms) FILTER (WHERE arm = 'policy') / min(ms) FILTER (WHERE arm = 'explicit'), 'FM0.000'),
              to_char(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) FILTER (WHERE arm = 'policy')
                      / percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) FILTER (WHERE arm = 'explicit'), 'FM0.000'))
  FROM res GROUP BY shape ORDER BY shape;
SQL

# --- 3. TPS -------------------------------------------------------------------
W=$DIR/scripts
mkdir -p "$W"; [ "$(id -u)" -eq 0 ] && chown "$TN_USER" "$W"
draw='\set t random(1, 100)
\set n random(1, '"$((PER_TENANT - 1))"')
\set id :t - 1 + 100 * :n
SELECT '"'"'00000000-0000-0000-0000-'"'"' || lpad(:t::text, 12, '"'"'0'"'"') AS key \gset'
# until set_tenant propagates (cz-ctx)
settenant="SET LOCAL citus.propagate_set_commands = 'local';
SET LOCAL tenancy.tenant_id = ':key';"
write_script() { printf '%s\nBEGIN;\n%s\n%s;\nEND;\n' "$draw" "$settenant" "$2" | tn_run tee "$W/$1.sql" >/dev/null; }
write_script pk_explicit "SELECT amount FROM items_plain WHERE tenant_id = ':key' AND id = :id"
write_script pk_policy "SELECT amount FROM items_rls WHERE id = :id"
write_script agg_explicit "SELECT count(*), sum(amount) FROM items_plain WHERE tenant_id = ':key'"
write_script agg_policy "SELECT count(*), sum(amount) FROM items_rls"
tps() {   # tps SCRIPT -> transactions per second
    (cd "$W" && tn_run pgbench -n -M simple -c 1 -j 1 -T "$DURATION" -h 127.0.0.1 -p "${CITUS_PORT[0]}" \
        -U bench_app -f "$W/$1.sql" "$CITUS_DB" 2>&1) \
        | sed -n 's/^tps = \([0-9.]*\).*/\1/p'
}
median() { sort -g | awk '{ r[NR] = $1 } END { m = (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2; printf "%.3f", m }'; }
echo
echo "TPS, pgbench -M simple -c 1 (one transaction: BEGIN; 2 x SET LOCAL; the query; END)"
echo "shape  explicit (median tps)  policy (median tps)  policy/explicit  A/A explicit/explicit"
for shape in pk agg; do
    tps "${shape}_explicit" >/dev/null; tps "${shape}_policy" >/dev/null   # warm
    : >"$DIR/r.$shape"
    for r in $(seq 1 "$ROUNDS"); do
        a=$(tps "${shape}_explicit"); b=$(tps "${shape}_policy"); a2=$(tps "${shape}_explicit")
        echo "$a $b $a2" >>"$DIR/r.$shape"
    done
    printf "%-6s %21s %20s %16s %22s\n" "$shape" \
        "$(awk '{print $1}' "$DIR/r.$shape" | median)" "$(awk '{print $2}' "$DIR/r.$shape" | median)" \
        "$(awk '{print $2 / $1}' "$DIR/r.$shape" | median)" "$(awk '{print $3 / $1}' "$DIR/r.$shape" | median)"
done
echo "(ratios are medians of per-round ratios; each round runs explicit, policy, explicit back to back)"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg); total: $(( $(date +%s) - t0 ))s"
