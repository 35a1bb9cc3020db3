# test/lib/citus.bash: a Citus coordinator and two workers on one machine,
# for the Citus suites (test/citus_*.sh).  Source test/lib/tap.bash first.
#
#   citus_installed          status 0 when the server has Citus 13.x
#   citus_skip_all MSG       when Citus is missing: "1..1", one SKIP line
#                            saying how to install it, exit 0
#   citus_cluster_start DIR [SETTING]...
#                            three servers (coordinator + 2 workers) under
#                            DIR, on TCP 127.0.0.1 (Citus connects by host
#                            name), shared_preload_libraries = 'citus,tenancy',
#                            settings appended to each; database "citus" with
#                            the citus extension on each node; workers added.
#                            Sets CITUS_PORT[0..2], CITUS_DATA[0..2], CITUS_DB.
#   cq N ARGS...             psql -At on node N (0 = coordinator), as superuser
#   citus_all SQL            run SQL on every node

CITUS_DB=citus
citus_installed() {
    [ -f "$(pg_config --pkglibdir)/citus.so" ] \
        && [ -f "$(pg_config --sharedir)/extension/citus.control" ]
}
citus_skip_all() {
    echo "1..1"
    echo "ok 1 # SKIP Citus is not installed ($1): as root run ../shared/citus/install.sh (or install Citus 13.2 for PostgreSQL 15 from the Citus packages)"
    TAP_PLAN=1 TAP_N=1
    exit 0
}
cq() { local n=$1; shift; psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "${CITUS_PORT[n]}" -U "$TAP_USER" -d "$CITUS_DB" "$@"; }
citus_all() { local n; for n in 0 1 2; do cq "$n" -c "$1" || return 1; done; }
citus_cluster_start() {
    local dir=$1 n; shift
    for n in 0 1 2; do
        CITUS_PORT[n]=$(tap_free_port) || bail "no free port"
        CITUS_DATA[n]=$dir/node$n
        own_server_init "${CITUS_DATA[n]}" "${CITUS_PORT[n]}" "$dir" \
            "listen_addresses = '127.0.0.1'" \
            "shared_preload_libraries = 'citus,tenancy'" \
            "max_worker_processes = 16" "max_connections = 100" \
            "log_min_messages = warning" "wal_level = logical" \
            "citus.shard_count = 8" "$@"
        own_server_run "${CITUS_DATA[n]}"
        tap_run "$BINDIR/createdb" -h 127.0.0.1 -p "${CITUS_PORT[n]}" "$CITUS_DB" \
            || bail "createdb on node $n failed"
        cq "$n" -c "SET client_min_messages = warning; CREATE EXTENSION citus" \
            || bail "CREATE EXTENSION citus on node $n failed"
    done
    cq 0 -c "SELECT citus_set_coordinator_host('127.0.0.1', ${CITUS_PORT[0]})" >/dev/null \
        || bail "citus_set_coordinator_host failed"
    for n in 1 2; do
        cq 0 -c "SELECT citus_add_node('127.0.0.1', ${CITUS_PORT[n]})" >/dev/null \
            || bail "citus_add_node for worker $n failed"
    done
}
