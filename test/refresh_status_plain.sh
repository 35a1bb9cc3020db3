#!/usr/bin/env bash
# TAP: tenancy.refresh_status() without shared_preload_libraries, on a
# throwaway cluster of its own (no launcher, no worker, same counting code).
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"
tap_tmpdir DIR refresh-plain
port=$(tap_free_port)
q() { psql_at "$DIR" "$port" -d postgres "$@"; }

plan 5
own_server_init "$DIR/data" "$port" "$DIR"
tap_at_exit "own_server_stop '$DIR/data'"
tap_run "$BINDIR/pg_ctl" -D "$DIR/data" -l "$DIR/data.log" -w start >/dev/null
ok $? "a cluster without shared_preload_libraries starts"

[ "$(q -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'tenancy%'")" = 0 ]
ok $? "no tenancy launcher without preloading"

out=$(q <<'SQL'
CREATE EXTENSION tenancy;
CREATE TABLE plain_orders (id int, tenant_id uuid);
INSERT INTO plain_orders SELECT g, CASE WHEN g % 5 <> 0 THEN gen_random_uuid() END FROM generate_series(1, 100) g;
INSERT INTO tenancy.tables (relation) VALUES ('plain_orders');
SELECT unmigrated || ' ' || method FROM tenancy.refresh_status('plain_orders');
SQL
)
[ "$out" = "20 exact" ]
ok $? "refresh_status() counts without preloading (got: $out)"

out=$(q -c "CREATE INDEX ON plain_orders (id) WHERE tenant_id IS NULL" \
        -c "SELECT unmigrated || ' ' || method FROM tenancy.refresh_status('plain_orders')")
[ "$out" = "20 exact" ]
ok $? "through the partial index too (got: $out)"

out=$(q -c "UPDATE plain_orders SET tenant_id = gen_random_uuid() WHERE tenant_id IS NULL" \
        -c "ALTER TABLE plain_orders ALTER tenant_id SET NOT NULL" \
        -c "SELECT unmigrated || ' ' || method FROM tenancy.refresh_status()")
[ "$out" = "0 proof" ]
ok $? "and by proof once NOT NULL (got: $out)"
tap_end
