#!/usr/bin/env bash
# TAP: the dashboards (issue 18).  The real Prometheus PostgreSQL exporter
# (Debian's prometheus-postgres-exporter) runs monitoring/postgres_exporter.yml
# against a server of its own, as a role with only pg_monitor; after a
# scripted workload (a legacy role bound to the implicit tenant, an
# application role with set_tenant(), a backfill, a table left to migrate)
# its /metrics show exactly the expected values.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"
EXPORTER=${EXPORTER:-/usr/bin/prometheus-postgres-exporter}
SRC=${TN_SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
if [ ! -x "$EXPORTER" ] || ! command -v curl >/dev/null; then
    echo "1..0 # SKIP prometheus-postgres-exporter or curl not installed (scripts/deps.sh installs them)"
    exit 0
fi
tap_tmpdir DIR prometheus-exporter
port=$(tap_free_port)
q() { psql_at "$DIR" "$port" -d postgres "$@"; }
as() { local role=$1; shift; psql -X -q -At -v ON_ERROR_STOP=1 -h "$DIR" -p "$port" -U "$role" -d postgres "$@"; }

plan 17
own_server_start "$DIR/data" "$port" "$DIR" "shared_preload_libraries = 'tenancy'" \
    "tenancy.worker_enabled = off"

q >/dev/null <<'SQL'
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('acme', 'Acme', '00000000-0000-0000-0000-0000000000a1');
SELECT tenancy.create_tenant('bolt', 'Bolt', '00000000-0000-0000-0000-0000000000b2');
SELECT tenancy.set_implicit_tenant('acme');
CREATE ROLE legacy_app LOGIN;
CREATE ROLE new_app LOGIN;
CREATE ROLE exporter LOGIN IN ROLE pg_monitor;
-- A table backfilled completely, one not yet, one in shadow mode.
CREATE TABLE orders (id int PRIMARY KEY, note text);
INSERT INTO orders SELECT g, 'o' FROM generate_series(1, 10) g;
SELECT tenancy.add_tenant_column('orders');
CREATE TABLE items (id int PRIMARY KEY, note text);
INSERT INTO items SELECT g, 'i' FROM generate_series(1, 5) g;
SELECT tenancy.add_tenant_column('items');
CREATE TABLE notes (id int PRIMARY KEY, tenant_id uuid, body text);
INSERT INTO notes VALUES (1, '00000000-0000-0000-0000-0000000000a1', 'a'),
                         (2, '00000000-0000-0000-0000-0000000000a1', 'a'),
                         (3, '00000000-0000-0000-0000-0000000000b2', 'b'),
                         (4, NULL, 'legacy');
GRANT SELECT, INSERT ON notes TO legacy_app, new_app;
SELECT tenancy.enable_rls('notes', mode => 'shadow');
SELECT tenancy.bind_role('legacy_app');
SELECT tenancy.reset_path_stats();
SELECT tenancy.reset_context_stats();
SQL
q -c "CALL tenancy.backfill('orders', tenant => 'acme')" >/dev/null 2>&1
# The legacy role: a read of 4 rows (2 would be hidden), a write of bolt's
# key (refused).  The application role: set_tenant('bolt'), a read of the
# 5 rows (3 would be hidden); an unknown tenant, refused.
as legacy_app -c 'SELECT count(*) FROM notes' >/dev/null
as legacy_app -c "INSERT INTO notes VALUES (11, '00000000-0000-0000-0000-0000000000b2', 'stray')" >/dev/null
as new_app -c "BEGIN; SELECT tenancy.set_tenant('bolt'); SELECT count(*) FROM notes; COMMIT;" >/dev/null
as new_app -c "SELECT tenancy.set_tenant('nobody')" >/dev/null 2>&1
q -c 'SELECT count(*) FROM tenancy.refresh_status()' >/dev/null

eport=$(tap_free_port)
[ "$eport" = "$port" ] && eport=$((port + 1))
DATA_SOURCE_NAME="host=$DIR port=$port user=exporter dbname=postgres sslmode=disable" \
    "$EXPORTER" --extend.query-path="$SRC/monitoring/postgres_exporter.yml" \
    --web.listen-address="127.0.0.1:$eport" --disable-default-metrics --disable-settings-metrics \
    --no-collector.database --no-collector.bgwriter >"$DIR/exporter.log" 2>&1 &
epid=$!
tap_at_exit "tap_kill $epid"
metrics() { curl -sf "http://127.0.0.1:$eport/metrics"; }
wait_for 20 metrics >/dev/null
ok $? "the exporter answers on /metrics"
M=$(metrics)
# The exporter labels each series with the server it scraped: left out.
metric() { printf '%s\n' "$M" | grep -E "^$1( |\{)" | sed 's/server="[^"]*",\{0,1\}//; s/,}/}/; s/{}//' | sort; }
expect "the exporter's queries ran without error (pg_monitor suffices)" "" \
    "$(grep -iE 'level=(error|warn)' "$DIR/exporter.log" | head -3)"

T='mode="shadow",relation="notes",rollout="",stage="shadow"'
expect "notes: legacy rows hidden 2" "pg_tenancy_table_legacy_rows_hidden{$T} 2" \
    "$(metric pg_tenancy_table_legacy_rows_hidden | grep 'relation="notes"')"
expect "notes: legacy writes refused 1" "pg_tenancy_table_legacy_writes_refused{$T} 1" \
    "$(metric pg_tenancy_table_legacy_writes_refused | grep 'relation="notes"')"
expect "notes: new rows hidden 3, new writes refused 0" \
    "pg_tenancy_table_new_rows_hidden{$T} 3|pg_tenancy_table_new_writes_refused{$T} 0" \
    "$(metric pg_tenancy_table_new_rows_hidden | grep 'relation="notes"')|$(metric pg_tenancy_table_new_writes_refused | grep 'relation="notes"')"
expect "unmigrated rows per table: items 5, notes 1, orders 0" \
    'pg_tenancy_table_unmigrated{mode="",relation="items",rollout="",stage="expand"} 5
pg_tenancy_table_unmigrated{mode="",relation="orders",rollout="",stage="backfill"} 0
pg_tenancy_table_unmigrated{mode="shadow",relation="notes",rollout="",stage="shadow"} 1' \
    "$(metric pg_tenancy_table_unmigrated)"
expect "backfill progress of orders: 100 percent, 10 rows" \
    'pg_tenancy_table_backfill_percent{mode="",relation="orders",rollout="",stage="backfill"} 100|pg_tenancy_table_backfill_rows_done{mode="",relation="orders",rollout="",stage="backfill"} 10' \
    "$(metric pg_tenancy_table_backfill_percent | grep orders)|$(metric pg_tenancy_table_backfill_rows_done | grep orders)"
like "backfill rate of orders is exported" "$(metric pg_tenancy_table_backfill_rows_per_s | grep orders)" \
    '^pg_tenancy_table_backfill_rows_per_s\{[^}]*relation="orders"[^}]*\} [0-9.e+]+$'
expect "per path: transactions" 'pg_tenancy_path_xacts{path="legacy"} 2
pg_tenancy_path_xacts{path="new"} 1' "$(metric pg_tenancy_path_xacts)"
expect "per path: rows read" 'pg_tenancy_path_rows_read{path="legacy"} 4
pg_tenancy_path_rows_read{path="new"} 5' "$(metric pg_tenancy_path_rows_read)"
expect "per path: writes refused" 'pg_tenancy_path_writes_refused{path="legacy"} 1
pg_tenancy_path_writes_refused{path="new"} 0' "$(metric pg_tenancy_path_writes_refused)"
expect "per tenant and path: rows hidden" \
    'pg_tenancy_tenant_rows_hidden{path="legacy",tenant="00000000-0000-0000-0000-0000000000a1"} 2
pg_tenancy_tenant_rows_hidden{path="new",tenant="00000000-0000-0000-0000-0000000000b2"} 3' \
    "$(metric pg_tenancy_tenant_rows_hidden)"
expect "per tenant and path: writes refused" \
    'pg_tenancy_tenant_writes_refused{path="legacy",tenant="00000000-0000-0000-0000-0000000000a1"} 1
pg_tenancy_tenant_writes_refused{path="new",tenant="00000000-0000-0000-0000-0000000000b2"} 0' \
    "$(metric pg_tenancy_tenant_writes_refused)"
expect "refusals of the tenant context: one unknown tenant" "pg_tenancy_context_refused_unknown 1" \
    "$(metric pg_tenancy_context_refused_unknown)"
expect "nothing dropped by the bounded counters" "pg_tenancy_counters_dropped_rows_dropped 0|pg_tenancy_counters_dropped_tenants_evicted 0" \
    "$(metric pg_tenancy_counters_dropped_rows_dropped)|$(metric pg_tenancy_counters_dropped_tenants_evicted)"

# Counters move: another read of the application role shows at the next scrape.
as new_app -c "BEGIN; SELECT tenancy.set_tenant('bolt'); SELECT count(*) FROM notes; COMMIT;" >/dev/null
M=$(metrics)
expect "a second scrape sees the new read" 'pg_tenancy_path_xacts{path="new"} 2|pg_tenancy_table_new_rows_hidden{'"$T"'} 6' \
    "$(metric pg_tenancy_path_xacts | grep new)|$(metric pg_tenancy_table_new_rows_hidden | grep notes)"
# The report for psql users agrees.
expect "tenancy.report() shows the same per table" \
    "items|expand||||5||0|0
notes|shadow|shadow|||1||3|6
orders|backfill||||0|done 100.0%|0|0" \
    "$(q -c 'SELECT relation, stage, mode, rollout, unmigrated IS NULL, unmigrated, backfill, legacy_divergences, new_divergences FROM tenancy.report()' | sed 's/|f|/||/')"
tap_end
