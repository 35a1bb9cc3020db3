#!/usr/bin/env bash
# bench/rls.sh: what the tenant policy costs, against an explicit WHERE.
#
# One run, one cluster, one non-owner role, pgbench -M prepared, 1 client.
#   arm A: items_plain, no row security, queried with WHERE tenant_id = :key
#   arm B: items_rls, the tenancy policy, no tenant filter in the query
#          (shadow mode: the same explicit WHERE as arm A, as the application
#          still filters itself while shadow mode counts)
# Both arms set the tenant in the transaction.  1M rows; 100 tenants share
# half of them uniformly, one tenant holds the other half.  Shapes:
#   pk   primary-key lookup (tenant of a uniformly drawn row)
#   agg  tenant-wide count/sum over a sequential scan (the big tenant)
#   like a non-leakproof predicate (note LIKE ...) for a small tenant
# Arms alternate, ROUNDS rounds of DURATION seconds each; the TPS ratio B/A
# is the median of the per-round ratios (each round runs A then B right
# after, so both see the same machine load), p95 latencies are over all
# rounds.  Prints them per shape and mode.  Modes: enforce;
# nofold (enforce with tenancy.fold_tenant = off: the accessor is called per
# row, as plain PostgreSQL does with a STABLE function; agg shape only);
# shadow.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh

ROWS=${RLS_BENCH_ROWS:-1000000}
DURATION=${RLS_BENCH_DURATION:-3}
ROUNDS=${RLS_BENCH_ROUNDS:-7}
PORT=${RLS_BENCH_PORT:-$(tn_free_port 55700)}

tn_build_install
DIR=$(tn_workdir bench-rls)
trap 'tn_cluster_stop "$DIR"; rm -rf "$DIR"' EXIT
tn_cluster_start "$DIR" "$PORT" "shared_preload_libraries = 'tenancy'" "shared_buffers = '1GB'" \
    "max_parallel_workers_per_gather = 0" "jit = off" "synchronous_commit = off" "autovacuum = off"
export PGHOST=$DIR PGPORT=$PORT
psql_su() { tn_run psql -X -q -v ON_ERROR_STOP=1 -d postgres "$@"; }

echo "rls bench: $ROWS rows, ${DURATION}s x $ROUNDS rounds per arm, pgbench -M prepared -c 1"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
t0=$(date +%s)
psql_su >/dev/null <<SQL
CREATE EXTENSION tenancy;
CREATE ROLE bench_app LOGIN;
GRANT USAGE ON SCHEMA tenancy TO bench_app;
SELECT count(tenancy.create_tenant('t' || n, 'Tenant ' || n, '00000000-0000-0000-0000-' || lpad(n::text, 12, '0')))
  FROM generate_series(1, 101) n;
CREATE TABLE items_plain (id bigint PRIMARY KEY, tenant_id uuid NOT NULL, amount int NOT NULL, note text NOT NULL);
INSERT INTO items_plain
SELECT i, ('00000000-0000-0000-0000-' || lpad((CASE WHEN i % 2 = 0 THEN 1 ELSE (i / 2) % 100 + 2 END)::text, 12, '0'))::uuid,
       (i::bigint * 7919 % 1000)::int, md5(i::text)
  FROM generate_series(1, $ROWS) i;
CREATE INDEX ON items_plain (tenant_id);
CREATE TABLE items_rls (id bigint NOT NULL, tenant_id uuid NOT NULL, amount int NOT NULL, note text NOT NULL);
INSERT INTO items_rls SELECT * FROM items_plain ORDER BY id;
ALTER TABLE items_rls ADD PRIMARY KEY (id);
CREATE INDEX ON items_rls (tenant_id);
GRANT SELECT ON items_plain, items_rls TO bench_app;
SET client_min_messages = warning;
SELECT tenancy.enable_rls('items_rls') IS NOT NULL;
VACUUM ANALYZE items_plain;
VACUUM ANALYZE items_rls;
CREATE EXTENSION pg_prewarm;
SQL
# Restart, then read both tables into shared buffers the same way, so that
# neither is favoured by where its pages landed while loading.
tn_run "$TN_BINDIR/pg_ctl" -D "$DIR/data" -w restart >/dev/null
psql_su -At -c "SELECT sum(pg_prewarm(c)) FROM unnest(ARRAY['items_plain', 'items_rls', 'items_plain_pkey', 'items_rls_pkey', 'items_plain_tenant_id_idx', 'items_rls_tenant_id_idx']::regclass[]) c" >/dev/null
echo "setup: $(( $(date +%s) - t0 ))s"

W=$DIR/scripts
mkdir -p "$W"; [ "$(id -u)" -eq 0 ] && chown "$TN_USER" "$W"
set_tenant="SELECT tenancy.set_tenant('00000000-0000-0000-0000-' || lpad(:t::text, 12, '0')) AS key \\gset"
# write_script NAME DRAW QUERY
write_script() {
    printf '%s\nBEGIN;\n%s\n%s;\nEND;\n' "$2" "$set_tenant" "$3" | tn_run tee "$W/$1.sql" >/dev/null
}
pk_draw='\set id random(1, '"$ROWS"')
\set t CASE WHEN :id % 2 = 0 THEN 1 ELSE (:id / 2) % 100 + 2 END'
agg_draw='\set t 1'
like_draw='\set t random(2, 101)'
write_script pk_A "$pk_draw" 'SELECT amount, note FROM items_plain WHERE id = :id AND tenant_id = :key'
write_script pk_B "$pk_draw" 'SELECT amount, note FROM items_rls WHERE id = :id'
write_script pk_S "$pk_draw" 'SELECT amount, note FROM items_rls WHERE id = :id AND tenant_id = :key'
write_script agg_A "$agg_draw" 'SELECT count(*), sum(amount) FROM items_plain WHERE tenant_id = :key'
write_script agg_B "$agg_draw" 'SELECT count(*), sum(amount) FROM items_rls'
write_script agg_S "$agg_draw" 'SELECT count(*), sum(amount) FROM items_rls WHERE tenant_id = :key'
write_script like_A "$like_draw" "SELECT count(*) FROM items_plain WHERE note LIKE '%ab%' AND tenant_id = :key"
write_script like_B "$like_draw" "SELECT count(*) FROM items_rls WHERE note LIKE '%ab%'"
write_script like_S "$like_draw" "SELECT count(*) FROM items_rls WHERE note LIKE '%ab%' AND tenant_id = :key"

# run SHAPE ARM TAG: one pgbench run; appends "tx" to $DIR/res.TAG and latencies (us) to $DIR/lat.TAG
run() {
    local shape=$1 arm=$2 tag=$3 opts=${EXTRA_OPTS:-} out
    [ "$shape" = agg ] && opts="$opts -c enable_indexscan=off -c enable_bitmapscan=off"
    rm -f "$W"/log.*
    out=$(cd "$W" && tn_run env PGOPTIONS="$opts" pgbench -n -M prepared -c 1 -j 1 -T "$DURATION" \
              -U bench_app -l --log-prefix="$W/log" -f "$W/${shape}_$arm.sql" postgres 2>&1) \
        || { echo "$out" >&2; return 1; }
    echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' >>"$DIR/res.$tag"
    cat "$W"/log.* | awk '{print $3}' >>"$DIR/lat.$tag"
}
p95() { sort -n "$1" | awk '{a[NR]=$1} END {i=int(NR*0.95); if (i<1) i=1; printf "%.2f", a[i]/1000}'; }
minlat() { sort -n "$1" | head -1; }
sum() { awk '{s+=$1} END {print s}' "$1"; }

report() {   # report MODE ARM_B_LETTER
    local mode=$1 b=$2
    local shapes="pk agg like"
    [ "$mode" = nofold ] && shapes=agg
    for shape in $shapes; do
        local ratio
        ratio=$(paste "$DIR/res.$mode.$shape.A" "$DIR/res.$mode.$shape.$b" \
                | awk '{ print $2 / $1 }' | sort -g \
                | awk '{ r[NR] = $1 } END { m = (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2; printf "%.3f", m }')
        printf "%-8s %-5s %17s %11s %11s %15s\n" "$mode" "$shape" "$ratio" \
            "$(p95 "$DIR/lat.$mode.$shape.A")" "$(p95 "$DIR/lat.$mode.$shape.$b")" \
            "$(awk -v a="$(minlat "$DIR/lat.$mode.$shape.A")" -v b="$(minlat "$DIR/lat.$mode.$shape.$b")" 'BEGIN { printf "%.3f", a / b }')"
    done
}

# exec_min MODE: executor time of the agg and like queries inside one session
# of bench_app, arms alternating, N times; the minimum of each arm is the
# least disturbed by other load on the machine.  Appends to $DIR/exec.txt.
exec_min() {
    local mode=$1 bq_agg="SELECT count(*), sum(amount) FROM items_rls" bq_like="SELECT count(*) FROM items_rls WHERE note LIKE '%ab%'"
    if [ "$mode" = shadow ]; then
        bq_agg="$bq_agg WHERE tenant_id = \$1"; bq_like="$bq_like AND tenant_id = \$1"
    fi
    tn_run psql -X -q -At -d postgres -v ON_ERROR_STOP=1 >>"$DIR/exec.txt" <<SQL
SET max_parallel_workers_per_gather = 0;
BEGIN;
CREATE TEMP TABLE res (shape text, arm text, ms float8);
GRANT ALL ON res TO bench_app;
DO \$\$
DECLARE t0 timestamptz; c bigint; s bigint; k uuid;
    q_a text[] := ARRAY['SELECT count(*), sum(amount) FROM items_plain WHERE tenant_id = \$1',
                        \$q\$SELECT count(*) FROM items_plain WHERE note LIKE '%ab%' AND tenant_id = \$1\$q\$];
    q_b text[] := ARRAY['$bq_agg', \$q\$$bq_like\$q\$];
    q_c text[] := ARRAY['SELECT count(*), sum(amount) FROM items_rls WHERE tenant_id = \$1',
                        \$q\$SELECT count(*) FROM items_rls WHERE note LIKE '%ab%' AND tenant_id = \$1\$q\$];
    shapes text[] := ARRAY['agg', 'like'];
    keys text[] := ARRAY['00000000-0000-0000-0000-000000000001', '00000000-0000-0000-0000-000000000007'];
BEGIN
    FOR i IN 1 .. 25 LOOP
        FOR j IN 1 .. 2 LOOP
            IF j = 1 THEN
                SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off;
            ELSE
                SET LOCAL enable_indexscan = on; SET LOCAL enable_bitmapscan = on;
            END IF;
            SET LOCAL ROLE bench_app;
            k := tenancy.set_tenant(keys[j])::uuid;
            t0 := clock_timestamp();
            EXECUTE q_a[j] INTO c USING k;
            INSERT INTO res VALUES (shapes[j], 'A', extract(epoch FROM clock_timestamp() - t0) * 1000);
            t0 := clock_timestamp();
            EXECUTE q_b[j] INTO c USING k;
            INSERT INTO res VALUES (shapes[j], 'B', extract(epoch FROM clock_timestamp() - t0) * 1000);
            -- control: the RLS table itself, row security bypassed (superuser), explicit filter
            RESET ROLE;
            t0 := clock_timestamp();
            EXECUTE q_c[j] INTO c USING k;
            INSERT INTO res VALUES (shapes[j], 'C', extract(epoch FROM clock_timestamp() - t0) * 1000);
        END LOOP;
    END LOOP;
END \$\$;
SELECT format('%-8s %-5s %14s %11s %11s %13s', '$mode', shape,
              to_char(min(ms) FILTER (WHERE arm = 'A') / min(ms) FILTER (WHERE arm = 'B'), 'FM0.000'),
              to_char(min(ms) FILTER (WHERE arm = 'A'), 'FM990.00'), to_char(min(ms) FILTER (WHERE arm = 'B'), 'FM990.00'),
              to_char(min(ms) FILTER (WHERE arm = 'C') / min(ms) FILTER (WHERE arm = 'B'), 'FM0.000'))
  FROM res GROUP BY shape ORDER BY shape;
COMMIT;
SQL
}

for mode in enforce nofold shadow; do
    EXTRA_OPTS=
    b=B
    case $mode in
        nofold) EXTRA_OPTS="-c tenancy.fold_tenant=off" ;;
        shadow) psql_su -c "SELECT tenancy.set_mode('items_rls', 'shadow') IS NOT NULL" >/dev/null; b=S ;;
    esac
    shapes="pk agg like"
    [ "$mode" = nofold ] && shapes=agg
    for shape in $shapes; do
        # warm both tables, then alternate A, B, A, B ...
        RW=$DURATION; DURATION=1; run "$shape" A warm; run "$shape" "$b" warm; DURATION=$RW
        for r in $(seq 1 "$ROUNDS"); do
            run "$shape" A "$mode.$shape.A"
            run "$shape" "$b" "$mode.$shape.$b"
        done
    done
    case $mode in
        enforce|shadow) exec_min "$mode" ;;
    esac
done

stats=$(psql_su -At -c "SELECT rows_checked || ' rows checked, ' || rows_hidden || ' would be hidden' FROM tenancy.shadow_stats WHERE relation = 'items_rls'::regclass")
echo
echo "mode     shape  tps B/A (median)  p95 A (ms)  p95 B (ms)  min lat A/B"
echo "(min lat A/B: fastest transaction of A over fastest of B, the least disturbed by other load)"
report enforce B
report nofold B
report shadow S
echo
echo "executor time, min of 25 alternating runs in one session (agg: seq scan, big tenant; like: small tenant);"
echo "C = the RLS table itself with the explicit filter, row security bypassed: C/B isolates the policy from"
echo "differences between the two physical copies"
echo "mode     shape  exec A/B (min)  A min (ms)  B min (ms)  same-table C/B"
cat "$DIR/exec.txt"
echo
echo "shadow counters during the shadow runs: $stats"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg); total: $(( $(date +%s) - t0 ))s"

# ---- Counters by path (issue 18): the cost of shadow accounting per path ----
# items_rls is in shadow mode now.  A full scan (every row through
# tenancy.shadow_read()) as bench_app, in one session, arms alternating:
#   A  tenancy.path_stats = off: shadow accounting per table only, as on main
#   B  tenancy.path_stats = on: also per path, role and tenant (new path:
#      the tenant set with set_tenant(); half the rows diverge)
#   A2 off again: the A/A baseline, the noise of the method
#   LA/LB  the same off/on on the legacy path (no tenant: every row
#      diverges, one divergence sampled per statement)
# Two measures: the minimum executor (wall) time of each arm, and the
# backend's CPU time (utime + stime of /proc/self/stat, in clock ticks)
# summed over all runs of an arm, which waiting for a core under load does
# not inflate.
PATHS_RUNS=${RLS_BENCH_PATH_RUNS:-25}
psql_su -At >"$DIR/paths.txt" <<SQL
SET max_parallel_workers_per_gather = 0;
SET enable_indexscan = off; SET enable_bitmapscan = off;
BEGIN;
CREATE TEMP TABLE res (arm text, ms float8, ticks bigint);
GRANT ALL ON res TO bench_app;
CREATE FUNCTION pg_temp.cpu_ticks() RETURNS bigint LANGUAGE sql AS \$f\$
    SELECT f[12]::bigint + f[13]::bigint
      FROM (SELECT string_to_array(split_part(pg_read_file('/proc/self/stat'), ') ', 2), ' ') AS f) x
\$f\$;
DO \$\$
DECLARE t0 timestamptz; t1 timestamptz; c0 bigint; c1 bigint; c bigint; s bigint; a text;
    arms text[] := ARRAY['A', 'B', 'A2', 'LA', 'LB'];
BEGIN
    FOR i IN 1 .. $PATHS_RUNS LOOP
        FOREACH a IN ARRAY arms LOOP
            RESET ROLE;
            PERFORM set_config('tenancy.path_stats', CASE WHEN a IN ('B', 'LB') THEN 'on' ELSE 'off' END, true);
            c0 := pg_temp.cpu_ticks();
            SET LOCAL ROLE bench_app;
            IF a LIKE 'L%' THEN
                PERFORM set_config('tenancy.tenant_id', '', true);
            ELSE
                PERFORM tenancy.set_tenant('00000000-0000-0000-0000-000000000001');
            END IF;
            t0 := clock_timestamp();
            SELECT count(*), sum(amount) INTO c, s FROM items_rls;
            t1 := clock_timestamp();
            RESET ROLE;
            c1 := pg_temp.cpu_ticks();
            INSERT INTO res VALUES (a, extract(epoch FROM t1 - t0) * 1000, c1 - c0);
        END LOOP;
    END LOOP;
END \$\$;
RESET ROLE;
SELECT format('%-4s min %8s ms   cpu %6s ticks', arm, to_char(min(ms), 'FM9990.00'), sum(ticks))
  FROM res GROUP BY arm ORDER BY arm;
SELECT format('%-32s min time %6s   cpu time %6s', label,
              to_char(min(ms) FILTER (WHERE arm = b) / min(ms) FILTER (WHERE arm = a), 'FM0.000'),
              to_char(sum(ticks) FILTER (WHERE arm = b)::numeric / nullif(sum(ticks) FILTER (WHERE arm = a), 0), 'FM0.000'))
  FROM res, (VALUES (1, 'B/A   per path, new path', 'A', 'B'),
                    (2, 'A2/A  A/A baseline (noise)', 'A', 'A2'),
                    (3, 'LB/LA per path, legacy path', 'LA', 'LB')) v(n, label, a, b)
 GROUP BY n, label ORDER BY n;
COMMIT;
SELECT 'path counters (whole bench): ' || string_agg(path || ' ' || rows_read || ' read, ' || rows_hidden || ' hidden', '; ' ORDER BY path)
  FROM tenancy.path_stats WHERE relation = 'items_rls'::regclass;
SELECT 'divergence samples: ' || count(*) FROM tenancy.path_divergences;
SQL
echo
echo "counters by path: a full scan of items_rls ($ROWS rows) in shadow mode, $PATHS_RUNS alternating runs per arm"
cat "$DIR/paths.txt"
echo "load after the path section: $(cut -d' ' -f1-3 /proc/loadavg)"
# ---- Per-tenant rollout (issue 18): enforced tenants on a mixed table ----
# items_enf: every tenant enforced.  items_mix: the same rows, the table in
# shadow mode, a 50% rollout to enforce, and the two measured tenants (the
# big one and a small one) enforced by the list.  The same prepared
# statements (generic plans: planned once, so the time is the executor's),
# as bench_app, for an enforced tenant, in batches of K executions; per
# batch the backend's CPU time (utime + stime of /proc/self/stat, 10 ms
# ticks: a batch takes a few hundred ms) and its wall time.  Arms: E (the
# all-enforce table), M (the mixed table), E2 (the all-enforce table again:
# the A/A baseline, which shows the noise); their order rotates from batch
# to batch; the minimum over MIX_RUNS batches of each arm is reported.
# Target: M/E <= 1.05.
mixed_bench() {
    local runs=${MIX_RUNS:-15}
    psql_su >/dev/null <<SQL
SET client_min_messages = warning;
CREATE TABLE items_enf (id bigint NOT NULL, tenant_id uuid NOT NULL, amount int NOT NULL, note text NOT NULL);
INSERT INTO items_enf SELECT * FROM items_plain ORDER BY id;
ALTER TABLE items_enf ADD PRIMARY KEY (id);
CREATE INDEX ON items_enf (tenant_id);
CREATE TABLE items_mix (id bigint NOT NULL, tenant_id uuid NOT NULL, amount int NOT NULL, note text NOT NULL);
INSERT INTO items_mix SELECT * FROM items_plain ORDER BY id;
ALTER TABLE items_mix ADD PRIMARY KEY (id);
CREATE INDEX ON items_mix (tenant_id);
GRANT SELECT ON items_enf, items_mix TO bench_app;
SELECT tenancy.enable_rls('items_enf') IS NOT NULL;
SELECT tenancy.enable_rls('items_mix', mode => 'shadow') IS NOT NULL;
SELECT tenancy.set_rollout_percent('items_mix', 50) IS NOT NULL;
SELECT tenancy.set_tenant_mode('items_mix', ARRAY['t1', 't7'], 'enforce') IS NOT NULL;
VACUUM ANALYZE items_enf;
VACUUM ANALYZE items_mix;
SELECT sum(pg_prewarm(c)) FROM unnest(ARRAY['items_enf', 'items_mix', 'items_enf_pkey', 'items_mix_pkey',
                                            'items_enf_tenant_id_idx', 'items_mix_tenant_id_idx']::regclass[]) c;
SQL
    echo
    echo "per-tenant rollout: enforced tenants, mixed table (shadow + 50% + listed) vs all-enforce table"
    echo "executor CPU time of K executions of a generic plan, min of $runs batches per arm, arms E, M, E2 rotating"
    echo "machine shared with other jobs: load $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
    echo "shape  tenant  mode(M)     K  E cpu (ms)  M cpu (ms)  M/E cpu  A/A E2/E  M/E wall"
    tn_run psql -X -q -At -d postgres -v ON_ERROR_STOP=1 <<SQL
SET max_parallel_workers_per_gather = 0;
SET plan_cache_mode = force_generic_plan;
BEGIN;
CREATE TEMP TABLE mres (shape text, arm text, cpu float8, wall float8, mode text);
CREATE FUNCTION pg_temp.cpu_ms() RETURNS float8 LANGUAGE sql AS \$f\$
    SELECT (split_part(s, ' ', 12)::float8 + split_part(s, ' ', 13)::float8) * 10
      FROM regexp_replace(pg_read_file('/proc/self/stat'), '^.*\) ', '') s;
\$f\$;
DO \$\$
DECLARE c0 float8; w0 timestamptz; a integer; m text;
    shapes text[] := ARRAY['agg', 'like', 'pk'];
    tkeys text[] := ARRAY['t1', 't7', 't7'];
    ks integer[] := ARRAY[4, 60, 200];
    qs text[] := ARRAY['SELECT count(*), sum(amount) FROM %s',
                       \$q\$SELECT count(*) FROM %s WHERE note LIKE '%%ab%%'\$q\$,
                       -- 500 primary-key lookups of t7's rows (ids 200 n + 11)
                       'SELECT sum(x.amount) FROM generate_series(0, 499) g JOIN %s x ON x.id = g * 200 + 11'];
    arms text[] := ARRAY['E', 'M', 'E2'];
    tbls text[] := ARRAY['items_enf', 'items_mix', 'items_enf'];
BEGIN
    FOR s IN 1 .. 3 LOOP
        IF s = 1 THEN
            SET LOCAL enable_indexscan = off; SET LOCAL enable_bitmapscan = off;
        ELSE
            SET LOCAL enable_indexscan = on; SET LOCAL enable_bitmapscan = on;
        END IF;
        SET LOCAL ROLE bench_app;
        PERFORM tenancy.set_tenant(tkeys[s]);
        FOR a IN 1 .. 3 LOOP
            EXECUTE format('PREPARE mix_%s_%s AS ', s, a) || format(qs[s], tbls[a]);
        END LOOP;
        FOR i IN 1 .. $runs LOOP
            FOR r IN 0 .. 2 LOOP
                a := (i + r) % 3 + 1;
                RESET ROLE; c0 := pg_temp.cpu_ms(); SET LOCAL ROLE bench_app;
                w0 := clock_timestamp();
                FOR n IN 1 .. ks[s] LOOP
                    EXECUTE format('EXECUTE mix_%s_%s', s, a);
                END LOOP;
                RESET ROLE;
                INSERT INTO mres VALUES (shapes[s], arms[a], pg_temp.cpu_ms() - c0,
                                         extract(epoch FROM clock_timestamp() - w0) * 1000, NULL);
                SET LOCAL ROLE bench_app;
            END LOOP;
        END LOOP;
        RESET ROLE;
        m := tenancy.rollout_current_mode('items_mix');
        UPDATE mres SET mode = m WHERE shape = shapes[s] AND arm = 'M';
    END LOOP;
END \$\$;
SELECT format('%-6s %-7s %-9s %4s %11s %11s %8s %9s %9s', shape,
              CASE shape WHEN 'agg' THEN 't1' ELSE 't7' END,
              max(mode) FILTER (WHERE arm = 'M'),
              CASE shape WHEN 'agg' THEN 4 WHEN 'like' THEN 60 ELSE 200 END,
              to_char(min(cpu) FILTER (WHERE arm = 'E'), 'FM99990'),
              to_char(min(cpu) FILTER (WHERE arm = 'M'), 'FM99990'),
              to_char(min(cpu) FILTER (WHERE arm = 'M') / min(cpu) FILTER (WHERE arm = 'E'), 'FM0.000'),
              to_char(min(cpu) FILTER (WHERE arm = 'E2') / min(cpu) FILTER (WHERE arm = 'E'), 'FM0.000'),
              to_char(min(wall) FILTER (WHERE arm = 'M') / min(wall) FILTER (WHERE arm = 'E'), 'FM0.000'))
  FROM mres GROUP BY shape ORDER BY shape;
COMMIT;
SQL
}
mixed_bench
