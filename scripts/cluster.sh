# Sourced by test.sh, demo.sh and bench/run.sh: build, install and run
# throwaway PostgreSQL clusters as the right user.
#
# TENANCY_SANDBOX=DIR (developers only) installs into a private relocated
# copy of PostgreSQL under DIR instead of the system one, so that several
# checkouts can build and test at once without overwriting each other.

TN_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_CONFIG=${PG_CONFIG:-pg_config}

tn_log() { printf 'tenancy: %s\n' "$*" >&2; }

# Commands that start servers run as postgres when we are root.
if [ "$(id -u)" -eq 0 ]; then
    TN_RUNAS=(runuser -u postgres --)
    TN_USER=postgres
else
    TN_RUNAS=()
    TN_USER=$(id -un)
fi
tn_run() { "${TN_RUNAS[@]}" "$@"; }

tn_pg_paths() {
    local sys_bindir sys_libdir sys_sharedir
    sys_bindir=$("$PG_CONFIG" --bindir)
    sys_libdir=$("$PG_CONFIG" --pkglibdir)
    sys_sharedir=$("$PG_CONFIG" --sharedir)
    TN_PGXS=$("$PG_CONFIG" --pgxs)
    TN_PGXS_DIR=$(dirname "$(dirname "$TN_PGXS")")                 # .../lib/pgxs/src
    if [ -n "${TENANCY_SANDBOX:-}" ]; then
        local base; base=$(dirname "$sys_bindir")        # /usr/lib/postgresql/15
        if [ ! -x "$TENANCY_SANDBOX$sys_bindir/postgres" ]; then
            tn_log "creating sandbox PostgreSQL in $TENANCY_SANDBOX"
            mkdir -p "$TENANCY_SANDBOX$(dirname "$base")" "$TENANCY_SANDBOX$(dirname "$sys_sharedir")"
            cp -a "$base" "$TENANCY_SANDBOX$(dirname "$base")/"
            cp -a "$sys_sharedir" "$TENANCY_SANDBOX$(dirname "$sys_sharedir")/"
        fi
        TN_BINDIR=$TENANCY_SANDBOX$sys_bindir
        TN_LIBDIR=$TENANCY_SANDBOX$sys_libdir
    else
        TN_BINDIR=$sys_bindir
        TN_LIBDIR=$sys_libdir
    fi
    TN_PG_REGRESS=$TN_PGXS_DIR/test/regress/pg_regress
}

# Build and install (system-wide, or into the sandbox).  WERROR=1 (set by
# test.sh, so make test and CI) makes any compiler warning an error.
tn_build_install() {
    tn_pg_paths
    make -s -C "$TN_ROOT" WERROR="${WERROR:-}" >/dev/null
    if [ -n "${TENANCY_SANDBOX:-}" ]; then
        make -s -C "$TN_ROOT" install DESTDIR="$TENANCY_SANDBOX" >/dev/null
    else
        make -s -C "$TN_ROOT" install >/dev/null
    fi
}

# A scratch directory the server user owns.
tn_workdir() {
    local d; d=$(mktemp -d "${TMPDIR:-/tmp}/tenancy-$1.XXXXXX")
    chmod 755 "$d"
    [ "$(id -u)" -eq 0 ] && chown "$TN_USER" "$d"
    echo "$d"
}

tn_free_port() {
    local p
    for p in $(seq "${1:-55432}" 65000); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
    done
    return 1
}

# tn_cluster_start DIR PORT [postgresql.conf lines...]
tn_cluster_start() {
    local dir=$1 port=$2; shift 2
    tn_run "$TN_BINDIR/initdb" -D "$dir/data" -A trust -U "$TN_USER" --no-sync >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; return 1; }
    {
        echo "port = $port"
        echo "listen_addresses = '127.0.0.1'"
        echo "unix_socket_directories = '$dir'"
        echo "fsync = off"
        for line in "$@"; do echo "$line"; done
    } | tn_run tee -a "$dir/data/postgresql.conf" >/dev/null
    tn_run "$TN_BINDIR/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null \
        || { cat "$dir/server.log" >&2; return 1; }
}

tn_cluster_stop() {
    [ -d "$1/data" ] && tn_run "$TN_BINDIR/pg_ctl" -D "$1/data" -m fast -w stop >/dev/null 2>&1 || true
}
