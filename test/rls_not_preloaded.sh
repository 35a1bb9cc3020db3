#!/usr/bin/env bash
# Without shared_preload_libraries: shadow mode and its counters raise 55000
# with a hint and change nothing; migrating and enforce modes work.
# Starts its own throwaway cluster (make test's clusters preload tenancy).
set -uo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"
tap_tmpdir DIR rls-plain
PORT=$(tap_free_port)

plan 7
own_server_start "$DIR/data" "$PORT" "$DIR"
q() { psql_at "$DIR" "$PORT" -d postgres "$@"; }
# sqlstate SQL: the SQLSTATE the statement fails with, or "ok".
sqlstate() {
    q -c "DO \$\$ BEGIN EXECUTE \$q\$$1\$q\$; RAISE NOTICE 'ok'; EXCEPTION WHEN OTHERS THEN RAISE NOTICE '%', SQLSTATE; END \$\$" 2>&1 \
        | sed -n 's/^NOTICE:  //p' | tail -1
}

q -c "SET client_min_messages = warning" -c "CREATE EXTENSION tenancy" \
  -c "CREATE TABLE t (id int, tenant_id uuid)" >/dev/null || bail "setup failed"

expect "enable_rls(mode => 'shadow') raises 55000" 55000 "$(sqlstate "SELECT tenancy.enable_rls('t', mode => 'shadow')")"
expect "...and changes nothing" "0 0" "$(q -c "SELECT (SELECT count(*) FROM pg_policy) || ' ' || (SELECT count(*) FROM tenancy.rls_tables)")"
expect "enforce mode works without preload" ok "$(sqlstate "SELECT tenancy.enable_rls('t')")"
expect "set_mode(shadow) raises 55000" 55000 "$(sqlstate "SELECT tenancy.set_mode('t', 'shadow')")"
expect "shadow_stats raises 55000" 55000 "$(sqlstate "SELECT * FROM tenancy.shadow_stats")"
expect "reset_shadow_stats() raises 55000" 55000 "$(sqlstate "SELECT tenancy.reset_shadow_stats()")"
hint=$(q -c "SELECT * FROM tenancy.shadow_stats" 2>&1 | grep -c "shared_preload_libraries")
expect "the error names shared_preload_libraries" 2 "$hint"
tap_end
