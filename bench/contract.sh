#!/usr/bin/env bash
# bench/contract.sh: how long the contract phase blocks the application on a
# 1M-row partitioned table.
#
# One cluster.  bench.payment: 1M rows in 4 monthly partitions, 12 tenants,
# primary key (payment_date, payment_id), a foreign key on the parent to
# bench.customer (12k rows) with an index covering it.  Both tables are
# registered; tenancy.scope_constraints_plan() rescopes the primary keys and
# the foreign key (per-partition concurrent builds, attached indexes, the
# partitioned key swap, the foreign key adopted from the partitions).
#
# A reader (primary-key lookups) and a writer (inserts) run through pgbench
# (-c 1 each, per-transaction log) for DURATION seconds.  The first FLOOR
# seconds run without DDL: the floor is the longest transaction there.
# Then each step of the plan runs on its own (psql -c: one transaction; the
# steps that are not concurrent builds set lock_timeout 100ms themselves and
# are retried when it times out); for each step the bench prints its duration
# and the longest reader and writer transaction that ended while it ran
# (or within 50 ms after), minus the floor.  Target: at most 200 ms above
# the floor for every step.  A step's duration is measured by the client
# (psql start included): an upper bound of how long it held its locks.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh

ROWS=${CONTRACT_BENCH_ROWS:-1000000}
FLOOR=${CONTRACT_BENCH_FLOOR:-10}
DURATION=${CONTRACT_BENCH_DURATION:-75}
PORT=${CONTRACT_BENCH_PORT:-$(tn_free_port 55800)}

tn_build_install
DIR=$(tn_workdir bench-contract)
trap 'tn_cluster_stop "$DIR"; rm -rf "$DIR"' EXIT
tn_cluster_start "$DIR" "$PORT" "shared_preload_libraries = 'tenancy'" "shared_buffers = '512MB'" \
    "max_parallel_workers_per_gather = 0" "max_parallel_maintenance_workers = 0" "jit = off" \
    "synchronous_commit = off" "autovacuum = off"
export PGHOST=$DIR PGPORT=$PORT
psql_su() { tn_run "$TN_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -d postgres "$@"; }

echo "contract bench: $ROWS rows in 4 partitions, reader and writer pgbench -c 1 each, floor ${FLOOR}s"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
t0=$(date +%s)
psql_su >/dev/null <<SQL
SET tenancy.tenant_type = 'bigint';
CREATE EXTENSION tenancy;
SELECT count(tenancy.create_tenant('t' || n, 'Tenant ' || n, n::text)) FROM generate_series(1, 12) n;
CREATE SCHEMA bench;
CREATE TABLE bench.customer (customer_id int PRIMARY KEY, tenant_id bigint NOT NULL, name text NOT NULL);
INSERT INTO bench.customer SELECT c, 1 + c % 12, 'c' || c FROM generate_series(0, 12 * 833) c;
CREATE TABLE bench.payment (payment_id int NOT NULL, tenant_id bigint NOT NULL, customer_id int NOT NULL,
                            amount numeric(7,2) NOT NULL, payment_date date NOT NULL,
                            PRIMARY KEY (payment_date, payment_id)) PARTITION BY RANGE (payment_date);
CREATE TABLE bench.payment_2022_01 PARTITION OF bench.payment FOR VALUES FROM ('2022-01-01') TO ('2022-02-01');
CREATE TABLE bench.payment_2022_02 PARTITION OF bench.payment FOR VALUES FROM ('2022-02-01') TO ('2022-03-01');
CREATE TABLE bench.payment_2022_03 PARTITION OF bench.payment FOR VALUES FROM ('2022-03-01') TO ('2022-04-01');
CREATE TABLE bench.payment_2022_04 PARTITION OF bench.payment FOR VALUES FROM ('2022-04-01') TO ('2022-05-01');
INSERT INTO bench.payment
SELECT g, 1 + g % 12, g % 12 + 12 * (g % 833), (g % 500) / 100.0, date '2022-01-01' + g % 120
  FROM generate_series(1, $ROWS) g;
ALTER TABLE bench.payment ADD FOREIGN KEY (customer_id) REFERENCES bench.customer;
CREATE INDEX payment_customer ON bench.payment (customer_id);
INSERT INTO tenancy.tables (relation) VALUES ('bench.customer'), ('bench.payment');
VACUUM ANALYZE bench.customer;
VACUUM ANALYZE bench.payment;
SQL
echo "setup: $(( $(date +%s) - t0 ))s"

W=$DIR/work
mkdir -p "$W"; [ "$(id -u)" -eq 0 ] && chown "$TN_USER" "$W"
printf '%s\n' '\set id random(1, '"$ROWS"')' \
    "SELECT amount FROM bench.payment WHERE tenant_id = 1 + :id % 12 AND payment_date = date '2022-01-01' + :id % 120 AND payment_id = :id;" \
    | tn_run tee "$W/reader.sql" >/dev/null
printf '%s\n' '\set id random(2000000, 2000000000)' \
    "INSERT INTO bench.payment VALUES (:id, 1 + :id % 12, :id % 12 + 12 * (:id % 833), 1.00, date '2022-01-01' + :id % 120) ON CONFLICT DO NOTHING;" \
    | tn_run tee "$W/writer.sql" >/dev/null

# The plan, one step a line: step<TAB>action<TAB>sql (no step has a tab or a
# line break: the names here are plain).
psql_su -At -F $'\t' -c "SELECT step, action, sql FROM tenancy.scope_constraints_plan() ORDER BY step" > "$W/plan.tsv"
echo "plan: $(wc -l < "$W/plan.tsv") steps"

(cd "$W" && tn_run "$TN_BINDIR/pgbench" -n -M prepared -c 1 -T "$DURATION" -f reader.sql -l --log-prefix=reader \
     -d postgres >reader.out 2>&1) &
rpid=$!
(cd "$W" && tn_run "$TN_BINDIR/pgbench" -n -M prepared -c 1 -T "$DURATION" -f writer.sql -l --log-prefix=writer \
     -d postgres >writer.out 2>&1) &
wpid=$!
floor_start=$(date +%s.%N)
sleep "$FLOOR"
floor_end=$(date +%s.%N)

: > "$W/steps.tsv"
while IFS=$'\t' read -r step action sql; do
    tries=0
    while :; do
        tries=$((tries + 1))
        s=$(date +%s.%N)
        if tn_run "$TN_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 -d postgres -c "$sql" >/dev/null 2>"$W/step.err"; then
            e=$(date +%s.%N)
            break
        fi
        if grep -q 'lock timeout' "$W/step.err" && [ "$tries" -lt 50 ]; then
            sleep 0.2; continue
        fi
        cat "$W/step.err" >&2; exit 1
    done
    printf '%s\t%s\t%s\t%s\t%s\n' "$step" "$action" "$s" "$e" "$tries" >> "$W/steps.tsv"
done < "$W/plan.tsv"
ddl_end=$(date +%s.%N)
wait "$rpid" "$wpid" || { cat "$W/reader.out" "$W/writer.out" >&2; exit 1; }
cat "$W"/reader.[0-9]* > "$W/reader.log"; cat "$W"/writer.[0-9]* > "$W/writer.log"
last=$(awk 'BEGIN { m = 0 } { t = $5 + $6 / 1e6; if (t > m) m = t } END { printf "%.6f", m }' "$W/reader.log" "$W/writer.log")

# longest transaction (ms) of LOG that ended in [FROM, TO]
longest() {
    awk -v a="$2" -v b="$3" 'BEGIN { m = 0 } { t = $5 + $6 / 1e6; if (t >= a && t <= b && $3 / 1000 > m) m = $3 / 1000 }
                             END { printf "%.1f", m }' "$1"
}
rfloor=$(longest "$W/reader.log" "$floor_start" "$floor_end")
wfloor=$(longest "$W/writer.log" "$floor_start" "$floor_end")
echo "floor (${FLOOR}s, no DDL): reader longest ${rfloor} ms, writer longest ${wfloor} ms;" \
     "reader $(grep -o 'number of transactions actually processed: [0-9]*' "$W/reader.out" | grep -o '[0-9]*$') tx," \
     "writer $(grep -o 'number of transactions actually processed: [0-9]*' "$W/writer.out" | grep -o '[0-9]*$') tx in ${DURATION}s"
printf '%-4s %-28s %9s %6s %12s %12s %12s %12s\n' step action 'took ms' tries 'reader ms' '+floor ms' 'writer ms' '+floor ms'
worst_r=0 worst_w=0 longest_step=0 longest_action=
while IFS=$'\t' read -r step action s e tries; do
    to=$(awk -v e="$e" 'BEGIN { printf "%.6f", e + 0.05 }')
    if awk -v t="$to" -v l="$last" 'BEGIN { exit !(t > l) }'; then
        printf '%-4s %-28s %9.0f %6s %s\n' "$step" "$action" "$(awk -v s="$s" -v e="$e" 'BEGIN { print (e - s) * 1000 }')" "$tries" \
               'not measured (after the load ended: raise CONTRACT_BENCH_DURATION)'
        continue
    fi
    r=$(longest "$W/reader.log" "$s" "$to"); w=$(longest "$W/writer.log" "$s" "$to")
    took=$(awk -v s="$s" -v e="$e" 'BEGIN { printf "%.0f", (e - s) * 1000 }')
    dr=$(awk -v x="$r" -v f="$rfloor" 'BEGIN { d = x - f; printf "%.1f", (d > 0) ? d : 0 }')
    dw=$(awk -v x="$w" -v f="$wfloor" 'BEGIN { d = x - f; printf "%.1f", (d > 0) ? d : 0 }')
    printf '%-4s %-28s %9s %6s %12s %12s %12s %12s\n' "$step" "$action" "$took" "$tries" "$r" "$dr" "$w" "$dw"
    worst_r=$(awk -v a="$worst_r" -v b="$dr" 'BEGIN { print (b > a) ? b : a }')
    worst_w=$(awk -v a="$worst_w" -v b="$dw" 'BEGIN { print (b > a) ? b : a }')
    # (concurrent builds, VALIDATE and ATTACH PARTITION block neither reads nor writes)
    case "$action" in create_partition_index|create_scoped_index|create_parent_index|create_foreign_key_index|validate_foreign_key|attach_partition_index) ;;
        *) if awk -v a="$longest_step" -v b="$took" 'BEGIN { exit !(b > a) }'; then longest_step=$took; longest_action="$step $action"; fi ;;
    esac
done < "$W/steps.tsv"
echo "contract phase: $(awk -v s="$floor_end" -v e="$ddl_end" 'BEGIN { printf "%.1f", e - s }')s;" \
     "longest wait above the floor: reader ${worst_r} ms, writer ${worst_w} ms (target <= 200);" \
     "longest step holding a lock that blocks reads or writes: ${longest_step} ms (step ${longest_action})"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
