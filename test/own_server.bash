# Sourced by the shell TAP tests that start a server of their own, for
# settings make test's cluster does not have (no preload, a standby, a
# sleepy WAL writer).  Not a test itself: make test runs test/*.sh only.
#
#   own_server_start DATADIR PORT SOCKETDIR [SETTING]...
#       initdb DATADIR, append the settings (one "name = value" each) to
#       the defaults below, start it (log: DATADIR.log); bails out on failure.
#   check N DESCRIPTION EXPECTED ACTUAL
#       prints the TAP line, and what differed.
BINDIR=${TN_BINDIR:-$(pg_config --bindir)}

own_server_start() {
    local data=$1 port=$2 sock=$3
    shift 3
    "$BINDIR/initdb" -D "$data" -A trust --no-sync >"$data.initdb.log" 2>&1 \
        || { echo "Bail out! initdb failed"; cat "$data.initdb.log" >&2; exit 1; }
    {
        printf "port = %s\nlisten_addresses = ''\nunix_socket_directories = '%s'\nfsync = off\n" "$port" "$sock"
        [ $# -gt 0 ] && printf '%s\n' "$@"
    } >>"$data/postgresql.conf"
    "$BINDIR/pg_ctl" -D "$data" -l "$data.log" -w start >/dev/null \
        || { echo "Bail out! server did not start"; cat "$data.log" >&2; exit 1; }
}

check() {
    if [ "$3" = "$4" ]; then echo "ok $1 - $2"; else echo "not ok $1 - $2"; echo "#   expected '$3', got '$4'"; fi
}
