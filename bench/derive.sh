#!/usr/bin/env bash
# bench/derive.sh: what a derived tenant costs legacy inserts (issue 14,
# item 7), against the plain implicit-tenant default.
#
# One run, one cluster, bigint tenant keys, 12 stores; a legacy role bound
# to the implicit tenant (tenancy.bind_role), every table under the
# enforce-mode policy; pgbench -M prepared, 1 client, one single-row INSERT
# per transaction, as legacy code writes:
#   arm A: cust_plain, tenant column with the add_tenant_column() default
#          (current tenant, else the implicit one): every row lands in the
#          implicit tenant
#   arm E: cust_expr, the same table with derive_tenant(source => 't.store_id')
#   arm B: rent_plain, a child table with a foreign key to a store-owned
#          parent under FORCE ROW LEVEL SECURITY, the plain default
#   arm F: rent_fk, the same table with derive_tenant(via => that foreign key)
# A and E insert the same rows, B and F too (parents drawn uniformly).
# Arms alternate, ROUNDS rounds of DURATION seconds each; the ratios are the
# medians of the per-round ratios E/A and F/B (target: 0.8).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh

DURATION=${DERIVE_BENCH_DURATION:-5}
ROUNDS=${DERIVE_BENCH_ROUNDS:-5}
PORT=${DERIVE_BENCH_PORT:-$(tn_free_port 55800)}

tn_build_install
DIR=$(tn_workdir bench-derive)
trap 'tn_cluster_stop "$DIR"; rm -rf "$DIR"' EXIT
tn_cluster_start "$DIR" "$PORT" "shared_preload_libraries = 'tenancy'" "jit = off" \
    "synchronous_commit = off" "autovacuum = off"
export PGHOST=$DIR PGPORT=$PORT
psql_su() { tn_run psql -X -q -v ON_ERROR_STOP=1 "$@"; }

echo "derive bench: ${DURATION}s x $ROUNDS rounds per arm, pgbench -M prepared -c 1, one INSERT per transaction"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores"
psql_su -d postgres <<SQL
CREATE DATABASE bench_derive;
ALTER DATABASE bench_derive SET tenancy.tenant_type = 'bigint';
CREATE ROLE bench_legacy LOGIN;
SQL
psql_su -d bench_derive >/dev/null <<SQL
CREATE EXTENSION tenancy;
SELECT count(tenancy.create_tenant('store' || s, 'Store ' || s, s::text)) FROM generate_series(1, 12) s;
SELECT tenancy.set_implicit_tenant('store1');
SELECT tenancy.bind_role('bench_legacy');
CREATE TABLE store (store_id bigint PRIMARY KEY, name text NOT NULL);
INSERT INTO store SELECT s, 'Store ' || s FROM generate_series(1, 12) s;
CREATE TABLE inventory (inventory_id bigint PRIMARY KEY, store_id bigint NOT NULL REFERENCES store);
INSERT INTO inventory SELECT i, 1 + i % 12 FROM generate_series(1, 12000) i;
CREATE TABLE cust_plain (id bigserial PRIMARY KEY, store_id bigint NOT NULL REFERENCES store,
                         email text NOT NULL, created timestamptz NOT NULL DEFAULT now());
CREATE TABLE cust_expr (LIKE cust_plain INCLUDING DEFAULTS, PRIMARY KEY (id),
                        FOREIGN KEY (store_id) REFERENCES store);
CREATE SEQUENCE cust_expr_id_seq OWNED BY cust_expr.id;
ALTER TABLE cust_expr ALTER COLUMN id SET DEFAULT nextval('cust_expr_id_seq');
CREATE TABLE rent_plain (id bigserial PRIMARY KEY,
                         inventory_id bigint NOT NULL CONSTRAINT rent_plain_inventory REFERENCES inventory,
                         created timestamptz NOT NULL DEFAULT now());
CREATE TABLE rent_fk (id bigserial PRIMARY KEY,
                      inventory_id bigint NOT NULL CONSTRAINT rent_fk_inventory REFERENCES inventory,
                      created timestamptz NOT NULL DEFAULT now());
SET client_min_messages = warning;
SELECT tenancy.add_tenant_column(t) IS NOT NULL
  FROM unnest('{store,inventory,cust_plain,cust_expr,rent_plain,rent_fk}'::regclass[]) t;
UPDATE store SET tenant_id = store_id;
UPDATE inventory SET tenant_id = store_id;
SELECT tenancy.derive_tenant('cust_expr', source => 't.store_id') IS NOT NULL;
SELECT tenancy.derive_tenant('rent_fk', via => 'rent_fk_inventory') IS NOT NULL;
SELECT tenancy.enable_rls(t) IS NOT NULL
  FROM unnest('{store,inventory,cust_plain,cust_expr,rent_plain,rent_fk}'::regclass[]) t;
GRANT SELECT, INSERT ON cust_plain, cust_expr, rent_plain, rent_fk TO bench_legacy;
GRANT USAGE ON SEQUENCE cust_plain_id_seq, cust_expr_id_seq, rent_plain_id_seq, rent_fk_id_seq TO bench_legacy;
VACUUM ANALYZE;
SQL

W=$DIR/scripts
mkdir -p "$W"; [ "$(id -u)" -eq 0 ] && chown "$TN_USER" "$W"
for t in cust_plain cust_expr; do
    printf '\\set s random(1, 12)\nINSERT INTO %s (store_id, email) VALUES (:s, '"'"'c'"'"' || :s || '"'"'@example.com'"'"');\n' "$t" \
        | tn_run tee "$W/$t.sql" >/dev/null
done
for t in rent_plain rent_fk; do
    printf '\\set i random(1, 12000)\nINSERT INTO %s (inventory_id) VALUES (:i);\n' "$t" | tn_run tee "$W/$t.sql" >/dev/null
done

# run ARM: one pgbench run as the legacy role; prints its tps
run() {
    (cd "$W" && tn_run pgbench -n -M prepared -c 1 -j 1 -T "$DURATION" -U bench_legacy -f "$1.sql" bench_derive 2>&1) \
        | awk '/^tps = / { print $3; exit }'
}
: >"$DIR/ratios.E"; : >"$DIR/ratios.F"
for r in $(seq 1 "$ROUNDS"); do
    a=$(run cust_plain); e=$(run cust_expr); b=$(run rent_plain); f=$(run rent_fk)
    echo "round $r: A $a tps, E $e tps, B $b tps, F $f tps"
    awk -v a="$a" -v b="$e" 'BEGIN { print b / a }' >>"$DIR/ratios.E"
    awk -v a="$b" -v b="$f" 'BEGIN { print b / a }' >>"$DIR/ratios.F"
done
median() { sort -g "$1" | awk '{ v[NR] = $1 } END { printf "%.2f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# Every legacy row of E and F in its store's tenant, none in A but the implicit one.
psql_su -d bench_derive -At <<'SQL'
SELECT format('rows: A %s (tenants %s), B %s (tenants %s), E %s (wrong tenant %s), F %s (wrong tenant %s)',
              (SELECT count(*) FROM cust_plain), (SELECT string_agg(DISTINCT tenant_id::text, ',') FROM cust_plain),
              (SELECT count(*) FROM rent_plain), (SELECT string_agg(DISTINCT tenant_id::text, ',') FROM rent_plain),
              (SELECT count(*) FROM cust_expr), (SELECT count(*) FROM cust_expr WHERE tenant_id <> store_id),
              (SELECT count(*) FROM rent_fk),
              (SELECT count(*) FROM rent_fk r JOIN inventory i USING (inventory_id) WHERE r.tenant_id <> i.store_id));
SQL
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "legacy inserts/s, derived vs plain implicit default (median of $ROUNDS rounds, target >= 0.8):"
echo "  expression source (E/A): $(median "$DIR/ratios.E")x"
echo "  foreign key source (F/B): $(median "$DIR/ratios.F")x"
