#!/usr/bin/env bash
# TAP (issue 17, context): ALTER EXTENSION tenancy UPDATE on a Citus
# coordinator updates every node.  The extension is installed at the
# released version 0.1 on the coordinator (Citus creates it on the workers),
# used (a tenant, a distributed table under the policy), then updated on the
# coordinator only; every node must then be at the default version with the
# catalog of a fresh install (test/catalog_snapshot.psql, compared with a
# fresh install in a database of its own on the same node), and the tenant
# context must reach the shards as before.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"
source "$(dirname "${BASH_SOURCE[0]}")/lib/citus.bash"
citus_installed || citus_skip_all "test/citus_upgrade.sh"
HERE=$(cd "$(dirname "$0")" && pwd)
SNAPSHOT=$HERE/catalog_snapshot.psql
NEW=$(sed -n "s/^default_version *= *'\([^']*\)'.*/\1/p" "$(pg_config --sharedir)/extension/tenancy.control" 2>/dev/null)
[ -n "$NEW" ] || NEW=$(psql -X -At -c "SELECT default_version FROM pg_available_extensions WHERE name = 'tenancy'")

plan 10
tap_tmpdir DIR citus_upgrade
citus_cluster_start "$DIR"

cq 0 -c "SET client_min_messages = warning; CREATE EXTENSION tenancy VERSION '0.1'" || bail "CREATE EXTENSION tenancy VERSION '0.1' failed"
is "0.1 on every node" "$(for n in 0 1 2; do cq $n -c "SELECT extversion FROM pg_extension WHERE extname = 'tenancy'"; done | tr '\n' ' ')" "0.1 0.1 0.1 "
cq 0 >/dev/null <<'SQL' || bail "0.1 setup failed"
SET client_min_messages = warning;
CREATE ROLE app LOGIN;
GRANT USAGE ON SCHEMA tenancy TO app;
SELECT tenancy.create_tenant('t1', 'T1', '00000000-0000-0000-0000-000000000001');
SELECT tenancy.create_tenant('t2', 'T2', '00000000-0000-0000-0000-000000000002');
CREATE TABLE orders (tenant_id uuid NOT NULL, id int NOT NULL, PRIMARY KEY (tenant_id, id));
SELECT create_distributed_table('orders', 'tenant_id');
INSERT INTO orders SELECT ('00000000-0000-0000-0000-00000000000' || (1 + i % 2))::uuid, i FROM generate_series(1, 9) i;
GRANT SELECT, INSERT ON orders TO app;
SELECT tenancy.enable_rls('orders');
SQL
[ "$NEW" != "0.1" ] || bail "the default version is 0.1: nothing to update to"

cq 0 -c "SET client_min_messages = warning; ALTER EXTENSION tenancy UPDATE"
ok $? "ALTER EXTENSION tenancy UPDATE on the coordinator"
is "$NEW on every node" "$(for n in 0 1 2; do cq $n -c "SELECT extversion FROM pg_extension WHERE extname = 'tenancy'"; done | tr '\n' ' ')" "$NEW $NEW $NEW "
app() { psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${CITUS_PORT[0]}" -U app -d "$CITUS_DB" "$@" 2>&1 | tr '\n' ' '; }
is "after the update the tenant reaches the shards" \
   "$(app -c "BEGIN" -c "SELECT tenancy.set_tenant('t1') IS NOT NULL" -c "SELECT count(*) FROM orders" -c "COMMIT" -c "SELECT count(*) FROM orders")" "t 4 0 "
# The grant of the setup is not part of the extension.
cq 0 -c "REVOKE USAGE ON SCHEMA tenancy FROM app"
for n in 0 1 2; do
    cq $n -f "$SNAPSHOT" > "$DIR/upgraded$n" 2>&1
    cq $n -c "CREATE DATABASE fresh" >/dev/null 2>&1
    psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${CITUS_PORT[n]}" -U "$TAP_USER" -d fresh \
        -c "SET client_min_messages = warning" -c "CREATE EXTENSION tenancy" -f "$SNAPSHOT" > "$DIR/fresh$n" 2>&1
    same_file "$DIR/upgraded$n" "$DIR/fresh$n" "node $n: the updated catalog equals a fresh $NEW install"
done
like "the snapshot is not empty" "$(wc -l < "$DIR/upgraded1")" "^[0-9]{3,}$"
is "the role binding trigger of $NEW is on every node" \
   "$(for n in 0 1 2; do cq $n -c "SELECT count(*) FROM pg_trigger WHERE tgname = 'role_bindings_citus'"; done | tr '\n' ' ')" "1 1 1 "
is "and a new tenant is still registered on the coordinator only (registries are per node)" \
   "$(cq 0 -c "SELECT tenancy.create_tenant('t3', 'T3', '00000000-0000-0000-0000-000000000003') IS NOT NULL"; for n in 1 2; do cq $n -c "SELECT count(*) FROM tenancy.tenants"; done | tr '\n' ' ')" "t
0 0 "
tap_end
