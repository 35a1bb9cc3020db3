#!/usr/bin/env bash
# TAP: tenancy.refresh_status() without shared_preload_libraries, on a
# throwaway cluster of its own (no launcher, no worker, same counting code).
set -u
DIR=$TN_WORK/refresh-plain
n=0
ok() { n=$((n + 1)); if [ "$1" = 0 ]; then echo "ok $n - $2"; else echo "not ok $n - $2"; fi; }
port=$(for p in $(seq 56100 56200); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; break; }; done)
q() { psql -X -q -At -v ON_ERROR_STOP=1 -h "$DIR" -p "$port" -d postgres "$@"; }
cleanup() { "$TN_BINDIR/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null 2>&1; rm -rf "$DIR"; }
trap cleanup EXIT

echo "1..5"
mkdir -p "$DIR"
"$TN_BINDIR/initdb" -D "$DIR/data" -A trust --no-sync >/dev/null 2>&1
printf "port = %s\nlisten_addresses = ''\nunix_socket_directories = '%s'\nfsync = off\n" "$port" "$DIR" \
    >> "$DIR/data/postgresql.conf"
"$TN_BINDIR/pg_ctl" -D "$DIR/data" -l "$DIR/server.log" -w start >/dev/null
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
