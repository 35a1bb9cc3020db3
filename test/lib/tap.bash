# test/lib/tap.bash: the one helper library of the shell TAP tests
# (test/*.sh).  Not a test itself: scripts/test.sh runs test/*.sh and
# test/*.sql only.  Source it first:
#
#   source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"
#
# scripts/test.sh runs each test with `prove -e bash`, as the server user,
# with PGHOST/PGPORT/PGDATABASE/PGUSER pointing at the preloaded TAP cluster
# (PGUSER a superuser), TN_BINDIR (the PostgreSQL binaries) and TN_WORK (a
# scratch directory the server user owns).
#
# TAP
#   plan N                 prints 1..N (checked again by tap_end)
#   ok STATUS DESC         ok when STATUS is 0 (e.g. `ok $? "..."`)
#   is DESC GOT WANT       ok when GOT = WANT; else prints both
#   expect DESC WANT GOT   the same, for a long computed GOT
#   isnt DESC GOT UNWANTED ok when GOT != UNWANTED
#   like DESC GOT REGEX    ok when GOT matches the extended regex
#   pass DESC / fail DESC [LINE...] / skip DESC
#   diag LINE...           "# LINE" on stdout
#   bail MSG               "Bail out! MSG" and exit 1 (calls tap_bail_hook
#                          first when the test defines one)
#   tap_end                says so when the number run differs from the plan
#   ok_file STATUS DESC FILE [LINES]  ok; on failure shows the first LINES
#                          (60) lines of FILE
#   same_file A B DESC     ok when files A and B are identical and A is not
#                          empty; on failure shows the diff
# Servers
#   tap_free_port          a local TCP port nobody listens on
#   tap_tmpdir VAR NAME    VAR := a new scratch directory, removed at exit
#                          (not in $(...): the removal would be lost)
#   own_server_init DATA PORT SOCKDIR [SETTING]...
#                          initdb DATA (as postgres when root, like
#                          scripts/cluster.sh), settings appended
#   own_server_run DATA    start it (log: DATA.log), stopped at exit
#   own_server_start DATA PORT SOCKDIR [SETTING]...   both
#   own_server_stop DATA / own_server_reload DATA
# psql
#   psql_at HOST PORT ARGS...  psql -X -q -At -v ON_ERROR_STOP=1, as the
#                          own server's superuser
#   admin DB ARGS...       the harness cluster, as PGUSER, warnings only
#   wait_for SECONDS CMD...  poll every 0.1 s until CMD succeeds (status 1
#                          on timeout)
# Background clients: psql sessions driven over fifos; each batch ends
# with an \echo marker carrying :SQLSTATE, so every wait is bounded.
#   client_start N PSQL-ARGS...  session N (psql -X -q -A -t -v VERBOSITY=terse)
#   client_send N LINE...  one argument per line
#   client_recv N          its output up to the marker in OUT, SQLSTATE in STATE
#   client_q N LINE...     send, then recv
#   TAP_TIMEOUT            seconds to wait for any one answer (30)
# Cleanup
#   tap_at_exit CMD        run CMD (eval'd) at exit, the last registered
#                          first, after the clients are stopped
#   tap_kill PID...        TERM, up to 5 s, then KILL

TN_BINDIR=${TN_BINDIR:-$(pg_config --bindir)}
BINDIR=$TN_BINDIR
TAP_TIMEOUT=${TAP_TIMEOUT:-30}
if [ "$(id -u)" -eq 0 ]; then
    TAP_RUNAS=(runuser -u postgres --)
    TAP_USER=postgres
else
    TAP_RUNAS=()
    TAP_USER=$(id -un)
fi
tap_run() { "${TAP_RUNAS[@]}" "$@"; }

# ---- TAP --------------------------------------------------------------------
TAP_N=0
TAP_PLAN=
plan() { TAP_PLAN=$1; echo "1..$1"; }
diag() { local l; for l in "$@"; do printf '# %s\n' "$l"; done; }
pass() { TAP_N=$((TAP_N + 1)); echo "ok $TAP_N - $1"; }
fail() { TAP_N=$((TAP_N + 1)); echo "not ok $TAP_N - $1"; shift; local l; for l in "$@"; do printf '#   %s\n' "$l"; done; }
skip() { TAP_N=$((TAP_N + 1)); echo "ok $TAP_N # SKIP $1"; }
ok() { if [ "$1" = 0 ]; then pass "$2"; else fail "$2" "status: $1"; fi; }
_tap_flat() { printf '%s' "$1" | tr '\n' '|'; }
is() {
    if [ "$2" = "$3" ]; then pass "$1"
    else fail "$1" "got:  '$(_tap_flat "$2")'" "want: '$(_tap_flat "$3")'"; fi
}
expect() { is "$1" "$3" "$2"; }
isnt() {
    if [ "$2" != "$3" ]; then pass "$1"
    else fail "$1" "got:  '$(_tap_flat "$2")'" "want anything else"; fi
}
like() {
    if [[ $2 =~ $3 ]]; then pass "$1"
    else fail "$1" "got:  '$(_tap_flat "$2")'" "want: /$3/"; fi
}
ok_file() {
    if [ "$1" = 0 ]; then pass "$2"; return; fi
    local lines=()
    [ -n "${3:-}" ] && mapfile -t lines < <(head -n "${4:-60}" "$3" 2>/dev/null)
    fail "$2" "${lines[@]}"
}
same_file() {
    local d rc
    d=$(diff -u "$1" "$2" 2>&1); rc=$?
    [ -s "$1" ] || { rc=1; d="nothing in $1"; }
    if [ $rc -eq 0 ]; then pass "$3"; else local lines; mapfile -t lines < <(printf '%s\n' "$d" | head -n 200); fail "$3" "${lines[@]}"; fi
}
bail() {
    echo "Bail out! $*"
    declare -F tap_bail_hook >/dev/null && tap_bail_hook
    exit 1
}
tap_end() {
    [ -z "$TAP_PLAN" ] || [ "$TAP_N" -eq "$TAP_PLAN" ] || diag "ran $TAP_N tests, planned $TAP_PLAN"
}

# ---- cleanup ----------------------------------------------------------------
declare -a TAP_CLEANUP=() CW=() CR=() CPID=() MARK=()
tap_at_exit() { TAP_CLEANUP+=("$*"); }
tap_kill() {
    local pid i
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "$@"; do
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
    done
    return 0
}
_tap_exit() {
    local fd i
    for fd in "${CW[@]}" "${CR[@]}"; do exec {fd}>&- 2>/dev/null; done
    [ ${#CPID[@]} -gt 0 ] && tap_kill "${CPID[@]}"
    for ((i = ${#TAP_CLEANUP[@]} - 1; i >= 0; i--)); do eval "${TAP_CLEANUP[i]}"; done
}
trap _tap_exit EXIT
trap 'exit 1' INT TERM

# ---- servers ------------------------------------------------------------------
tap_free_port() {
    local p try
    for try in $(seq 200); do
        p=$((20000 + RANDOM % 20000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
    done
    return 1
}
tap_tmpdir() {
    local _d
    _d=$(mktemp -d "${TN_WORK:-${TMPDIR:-/tmp}}/$2.XXXXXX") || bail "mktemp failed"
    [ "$(id -u)" -eq 0 ] && chown "$TAP_USER" "$_d"
    tap_at_exit "rm -rf '$_d'"
    printf -v "$1" '%s' "$_d"
}
own_server_init() {
    local data=$1 port=$2 sock=$3
    shift 3
    tap_run "$BINDIR/initdb" -D "$data" -A trust -U "$TAP_USER" --no-sync >"$data.initdb.log" 2>&1 \
        || { cat "$data.initdb.log" >&2; bail "initdb failed"; }
    {
        printf "port = %s\nlisten_addresses = ''\nunix_socket_directories = '%s'\nfsync = off\n" "$port" "$sock"
        [ $# -gt 0 ] && printf '%s\n' "$@"
    } | tap_run tee -a "$data/postgresql.conf" >/dev/null
}
own_server_run() {
    tap_at_exit "own_server_stop '$1'"
    tap_run "$BINDIR/pg_ctl" -D "$1" -l "$1.log" -w start >/dev/null \
        || { cat "$1.log" >&2; bail "server $1 did not start"; }
}
own_server_start() { own_server_init "$@"; own_server_run "$1"; }
own_server_stop() { tap_run "$BINDIR/pg_ctl" -D "$1" -m immediate -w stop >/dev/null 2>&1; return 0; }
own_server_reload() { tap_run "$BINDIR/pg_ctl" -D "$1" reload >/dev/null; }

# ---- psql ---------------------------------------------------------------------
psql_at() { local h=$1 p=$2; shift 2; psql -X -q -At -v ON_ERROR_STOP=1 -h "$h" -p "$p" -U "$TAP_USER" "$@"; }
admin() { local db=$1; shift; PGOPTIONS="-c client_min_messages=warning" psql -X -q -v ON_ERROR_STOP=1 -d "$db" "$@"; }
wait_for() {
    local deadline=$((SECONDS + $1)); shift
    until "$@"; do [ $SECONDS -ge $deadline ] && return 1; sleep 0.1; done
}

# ---- background clients ------------------------------------------------------
TAP_CLIENT_DIR=
client_start() {
    local i=$1 fd; shift
    [ -n "$TAP_CLIENT_DIR" ] || tap_tmpdir TAP_CLIENT_DIR clients
    mkfifo "$TAP_CLIENT_DIR/c$i.in" "$TAP_CLIENT_DIR/c$i.out" || bail "mkfifo failed"
    stdbuf -oL -eL psql -X -q -A -t -v VERBOSITY=terse "$@" \
        <"$TAP_CLIENT_DIR/c$i.in" >"$TAP_CLIENT_DIR/c$i.out" 2>&1 &
    CPID[i]=$!
    exec {fd}>"$TAP_CLIENT_DIR/c$i.in"; CW[i]=$fd
    exec {fd}<"$TAP_CLIENT_DIR/c$i.out"; CR[i]=$fd
}
TAP_SEQ=0
client_send() {
    local i=$1; shift
    TAP_SEQ=$((TAP_SEQ + 1)); MARK[i]="@@$TAP_SEQ@@"
    printf '%s\n' "$@" "\\echo ${MARK[i]} :SQLSTATE" >&"${CW[i]}" || bail "client $i is gone"
}
client_recv() {
    local i=$1 line deadline=$((SECONDS + TAP_TIMEOUT))
    OUT=
    while [ "$SECONDS" -le "$deadline" ]; do
        IFS= read -r -t "$TAP_TIMEOUT" line <&"${CR[i]}" \
            || bail "client $i: no answer within ${TAP_TIMEOUT}s (got so far: $(_tap_flat "$OUT"))"
        case $line in
            "${MARK[i]} "*) STATE=${line#"${MARK[i]} "}; OUT=${OUT%$'\n'}; return 0 ;;
            *) OUT+=$line$'\n' ;;
        esac
    done
    bail "client $i: no marker within ${TAP_TIMEOUT}s"
}
client_q() { client_send "$@"; client_recv "$1"; }
