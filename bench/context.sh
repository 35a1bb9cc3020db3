#!/usr/bin/env bash
# bench/context.sh: what reading and setting the tenant context costs.
#
# On a throwaway preloaded cluster, a 2M-row table of 100 tenants (uuid keys)
# is queried by a role that owns nothing and has no BYPASSRLS:
#
#  1. a forced sequential scan, count(*) WHERE tenant_id = X, with X the
#     literal key, tenancy.current_tenant(), (SELECT tenancy.current_tenant())
#     or current_setting('app.tenant')::uuid;
#  2. transactions BEGIN; <set the tenant>; primary-key lookup; END; with
#     SELECT tenancy.set_tenant(key) against SET LOCAL tenancy.tenant_id = key.
#
# The arms of each part run interleaved in one pgbench run (a round), so that
# load from other processes on the machine hits every arm alike; a round
# gives one ratio per arm, and the result is the median over the rounds.
#  - Part 1 compares the backend's CPU time per query (log_statement_stats),
#    best of each round.
#  - Part 2 compares the client's median time per transaction (pgbench's
#    per-transaction log), i.e. the inverse of the TPS ratio.  Each script
#    holds one tenant's key as a literal (SET cannot take a bind parameter),
#    so both arms can run under the same protocol: the simple protocol, and
#    the extended protocol with prepared statements (-M prepared).
#
# BENCH_ROUNDS (7), BENCH_ROWS (2000000), BENCH_SCAN_SECONDS (8) and
# BENCH_TX_SECONDS (4, per protocol) and BENCH_TOKENS (5000 per algorithm)
# size the run; about 3.5 minutes in all.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/cluster.sh

ROUNDS=${BENCH_ROUNDS:-7}
ROWS=${BENCH_ROWS:-2000000}
SCAN_SECONDS=${BENCH_SCAN_SECONDS:-8}
TX_SECONDS=${BENCH_TX_SECONDS:-4}
TX_TENANTS=50                                   # pgbench takes at most 128 scripts
TENANTS=100
KEY_PREFIX=00000000-0000-4000-8000-000000000     # tenant n (100..199) is KEY_PREFIX || n
KEY=${KEY_PREFIX}142
ROLE=bench_app

tn_build_install
WORK=$(tn_workdir bench-context)
DIR=$WORK/cluster
mkdir -p "$DIR"; [ "$(id -u)" -eq 0 ] && chown "$TN_USER" "$DIR"
trap 'tn_cluster_stop "$DIR"; rm -rf "$WORK"' EXIT
port=$(tn_free_port 55500)
tn_cluster_start "$DIR" "$port" \
    "shared_preload_libraries = 'tenancy'" \
    "shared_buffers = '512MB'" \
    "jit = off" \
    "max_parallel_workers_per_gather = 0" \
    "log_min_messages = warning" \
    "tenancy.token_keys_file = 'token_keys'" || { tn_log "cannot start the bench cluster"; exit 1; }

sql() { tn_run "$TN_BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$DIR" -p "$port" -d postgres "$@"; }
bench() { tn_run env PGOPTIONS="${PGOPTIONS:-}" "$TN_BINDIR/pgbench" -n -r -h "$DIR" -p "$port" -U "$ROLE" "$@" postgres; }

# ---- data ------------------------------------------------------------------
t0=$SECONDS
sql <<EOF
CREATE EXTENSION tenancy;
CREATE EXTENSION pg_prewarm;
INSERT INTO tenancy.tenants (id, slug, name)
    SELECT ('$KEY_PREFIX' || (99 + i))::uuid, 'tenant-' || i, 'Tenant ' || i
    FROM generate_series(1, $TENANTS) i;
CREATE TABLE t (id int PRIMARY KEY, tenant_id uuid NOT NULL, v int NOT NULL);
INSERT INTO t SELECT g, ('$KEY_PREFIX' || (100 + g % $TENANTS))::uuid, g FROM generate_series(1, $ROWS) g;
CREATE INDEX ON t (tenant_id);
VACUUM (FREEZE, ANALYZE) t;
SELECT pg_prewarm('t') \\g /dev/null
CREATE ROLE $ROLE LOGIN;
GRANT SELECT ON t TO $ROLE;
EOF

SCAN_OPTS="-c enable_indexscan=off -c enable_bitmapscan=off -c tenancy.tenant_id=$KEY -c app.tenant=$KEY"
LIT="SELECT count(*) FROM t WHERE tenant_id = '$KEY';"
CUR="SELECT count(*) FROM t WHERE tenant_id = tenancy.current_tenant();"
SET="SELECT count(*) FROM t WHERE tenant_id = current_setting('app.tenant')::uuid;"
INIT="SELECT count(*) FROM t WHERE tenant_id = (SELECT tenancy.current_tenant());"

# Same answer, same plan for the three arms, as the benchmarked role.
check=$(tn_run env PGOPTIONS="$SCAN_OPTS" "$TN_BINDIR/psql" -X -q -At -v ON_ERROR_STOP=1 -h "$DIR" -p "$port" \
        -U "$ROLE" -d postgres -c "$LIT" -c "$CUR" -c "$INIT" -c "$SET" -c "SELECT rolbypassrls FROM pg_roles WHERE rolname = current_user" | tr '\n' ' ')
plan=$(tn_run env PGOPTIONS="$SCAN_OPTS" "$TN_BINDIR/psql" -X -q -At -h "$DIR" -p "$port" -U "$ROLE" -d postgres \
       -c "EXPLAIN (COSTS OFF) ${CUR%;}" | tr '\n' ' ' | sed 's/  */ /g')
n=$((ROWS / TENANTS))
case $check in "$n $n $n $n f ") ;;
    *) tn_log "unexpected counts or role: $check"; exit 1 ;; esac

echo "tenancy bench: context -- $ROWS rows, $TENANTS tenants (uuid), $ROUNDS rounds, role $ROLE (not owner, no BYPASSRLS)"
echo "  setup $((SECONDS - t0))s; plan: $plan"
echo "  PostgreSQL $(sql -c 'SHOW server_version'), shared_buffers 512MB (table prewarmed), jit off, no parallel workers"

# group_stats: reads "group value" lines, prints "group median count min" per group
group_stats() {
    sort -k1,1n -k2,2g |
        awk '{ n[$1]++; v[$1, n[$1]] = $2 }
             END { for (g in n) { m = n[g]
                       med = (m % 2) ? v[g, (m + 1) / 2] : (v[g, m / 2] + v[g, m / 2 + 1]) / 2
                       print g, med, m, v[g, 1] } }' | sort -n
}
# run_arms NAME GROUP_SIZE PGBENCH-ARGS...: run pgbench with a per-transaction
# log; print group_stats of the latencies (us) for each group of GROUP_SIZE
# consecutive scripts (an arm).
run_arms() {
    local name=$1 size=$2; shift 2
    rm -f "$WORK/$name".log*
    bench --log --log-prefix="$WORK/$name.log" "$@" >"$WORK/$name.out" 2>&1 \
        || { cat "$WORK/$name.out" >&2; exit 1; }
    # log line: client_id transaction_no latency_us script_no epoch_s epoch_us
    cat "$WORK/$name".log* | awk -v k="$size" '{ print int($4 / k), $3 }' | group_stats
}
ratio() { awk -v a="$1" -v b="$2" -v f="${3:-%.3f}" 'BEGIN { printf f, a / b }'; }
median() { sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

# ---- 1. sequential scan -----------------------------------------------------
# One script runs literal, current_tenant(), (SELECT current_tenant()), then
# the same in reverse order, then current_setting() once (it is slow).  The
# (SELECT ...) form is an initPlan, evaluated once per execution: it shows
# what an RLS policy written that way costs.  What is compared is the CPU
# time the backend spent on each query (log_statement_stats, paired with the
# statement by log_statement = all), best of the round: unlike wall-clock
# time it does not count the time other processes take the CPU from the
# scan, and interference (cache pollution, a virtual CPU's steal time) only
# ever adds to it, so the fastest run of each arm is the least disturbed.
printf '%s\n' "$LIT" "$CUR" "$INIT" "$INIT" "$CUR" "$LIT" "$SET" >"$WORK/scan.sql"
sql -c "ALTER ROLE $ROLE SET log_statement_stats = on" -c "ALTER ROLE $ROLE SET log_statement = 'all'"
LOG=$DIR/server.log
row() { printf '  %-7s %-9s %-18s %-28s %-37s %s\n' "$@"; }
echo
echo "1. forced seq scan, count(*) WHERE tenant_id = X: best CPU time per query / best with the literal key"
row round literal "current_tenant()" "(SELECT current_tenant())" "current_setting('app.tenant')::uuid" queries
: >"$WORK/cur.ratios"; : >"$WORK/init.ratios"; : >"$WORK/set.ratios"
for r in $(seq "$ROUNDS"); do
    off=$(stat -c %s "$LOG")
    PGOPTIONS=$SCAN_OPTS bench -T "$SCAN_SECONDS" -f "$WORK/scan.sql" >"$WORK/scan.out" 2>&1 \
        || { cat "$WORK/scan.out" >&2; exit 1; }
    # "... LOG:  statement: SELECT ..." then, in the DETAIL of the next
    # entry, a line "!	0.061818 s user, 0.000000 s system, 0.062 s elapsed"
    tail -c +$((off + 1)) "$LOG" | awk '
        /LOG:  statement: / { arm = /\(SELECT tenancy/ ? 2 : /current_tenant/ ? 1 : /current_setting/ ? 3 : 0; next }
        /s user, .* s system, .* s elapsed/ { if (arm != "") print arm, $2 + $5; arm = "" }' |
        group_stats >"$WORK/scan.med"
    read -r _ _ nlit lit < <(sed -n 1p "$WORK/scan.med")
    read -r _ _ ncur cur < <(sed -n 2p "$WORK/scan.med")
    read -r _ _ ninit init < <(sed -n 3p "$WORK/scan.med")
    read -r _ _ nset set < <(sed -n 4p "$WORK/scan.med")
    [ -n "${set:-}" ] || { tn_log "an arm did not run: $(cat "$WORK/scan.med")"; exit 1; }
    rc=$(ratio "$cur" "$lit"); ri=$(ratio "$init" "$lit"); rs=$(ratio "$set" "$lit" %.2f)
    echo "$rc" >>"$WORK/cur.ratios"; echo "$ri" >>"$WORK/init.ratios"; echo "$rs" >>"$WORK/set.ratios"
    row "$r" 1 "${rc}x" "${ri}x" "${rs}x" "$nlit/$ncur/$ninit/$nset"
done
sql -c "ALTER ROLE $ROLE RESET ALL"
scan_cur=$(median <"$WORK/cur.ratios"); scan_init=$(median <"$WORK/init.ratios"); scan_set=$(median <"$WORK/set.ratios")
row median 1 "${scan_cur}x" "${scan_init}x" "${scan_set}x" ""

# ---- 2. set the tenant + primary-key lookup --------------------------------
# One script per (arm, tenant), each with its key as a literal, picked at
# random per transaction: the arms interleave, tenants vary, and no arm needs
# a bind parameter for its key (SET cannot take one), so both arms run under
# the same protocol.  Only the looked-up id is a variable.
K=$TX_TENANTS
args=()
for arm in set_tenant set_local; do
    for i in $(seq 0 $((K - 1))); do
        key=$KEY_PREFIX$((100 + i * TENANTS / K))
        f=$WORK/tx_${arm}_$i.sql
        {
            echo "\\set id random(1, $ROWS)"
            echo "BEGIN;"
            if [ "$arm" = set_tenant ]; then echo "SELECT tenancy.set_tenant('$key');"
            else echo "SET LOCAL tenancy.tenant_id = '$key';"; fi
            echo "SELECT v FROM t WHERE id = :id;"
            echo "END;"
        } >"$f"
        args+=(-f "$f@1")
    done
done
declare -A tx
echo
echo "2. transactions BEGIN; <set tenant>; pk lookup; END (1 client, $K tenants, random id):"
echo "   median time per transaction / median with SET LOCAL (= inverse TPS ratio)"
printf '  %-7s %-9s %-24s %s\n' round "SET LOCAL" "set_tenant(), simple" "set_tenant(), prepared"
: >"$WORK/tx.simple"; : >"$WORK/tx.prepared"
for r in $(seq "$ROUNDS"); do
    for mode in simple prepared; do
        run_arms tx "$K" -M "$mode" -T "$TX_SECONDS" "${args[@]}" >"$WORK/tx.med"
        read -r _ st _ < <(sed -n 1p "$WORK/tx.med")
        read -r _ sl _ < <(sed -n 2p "$WORK/tx.med")
        [ -n "${sl:-}" ] || { tn_log "an arm did not run: $(cat "$WORK/tx.med")"; exit 1; }
        tx[$mode]=$(ratio "$st" "$sl")
        echo "${tx[$mode]}" >>"$WORK/tx.$mode"
    done
    printf '  %-7s %-9s %-24s %s\n' "$r" 1 "${tx[simple]}x" "${tx[prepared]}x"
done
tx_simple=$(median <"$WORK/tx.simple"); tx_prepared=$(median <"$WORK/tx.prepared")
printf '  %-7s %-9s %-24s %s\n' median 1 "${tx_simple}x" "${tx_prepared}x"

# ---- 3. verify a token + primary-key lookup ---------------------------------
NTOK=${BENCH_TOKENS:-5000}
tn_run python3 - "$WORK" "$NTOK" "$KEY_PREFIX" "$TENANTS" <<'PY' || { tn_log "python3-jwt could not mint the tokens"; exit 1; }
import base64, os, random, sys, time
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
work, n, prefix, tenants = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
hs = os.urandom(32)
ed = ed25519.Ed25519PrivateKey.generate()
rs = rsa.generate_private_key(public_exponent=65537, key_size=2048)
es = ec.generate_private_key(ec.SECP256R1())
der = lambda k: base64.b64encode(k.public_key().public_bytes(
    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
with open(os.path.join(work, "token_keys"), "w") as f:
    f.write("hs1 HS256 %s\ned1 EdDSA %s\nrs1 RS256 %s\nes1 ES256 %s\n"
            % (base64.b64encode(hs).decode(), der(ed), der(rs), der(es)))
exp = int(time.time()) + 86400
with open(os.path.join(work, "tokens.tsv"), "w") as f:
    for i in range(1, n + 1):
        f.write("key\t%d\t%s%d\n" % (i, prefix, 100 + random.randrange(tenants)))
    for alg, key, kid in (("HS256", hs, "hs1"), ("EdDSA", ed, "ed1"), ("RS256", rs, "rs1"), ("ES256", es, "es1")):
        for i in range(1, n + 1):
            t = jwt.encode({"tenant_id": "%s%d" % (prefix, 100 + random.randrange(tenants)),
                            "sub": "user-%d" % i, "exp": exp, "jti": "%s-%d" % (alg, i)},
                           key, algorithm=alg, headers={"kid": kid})
            f.write("%s\t%d\t%s\n" % (alg, i, t))
PY
tn_run install -m 600 "$WORK/token_keys" "$DIR/data/token_keys"
sql -c "CREATE TABLE bench_tok (arm text, id int, arg text, PRIMARY KEY (arm, id))" \
    -c "\\copy bench_tok FROM '$WORK/tokens.tsv'" -c "VACUUM ANALYZE bench_tok" -c "GRANT SELECT ON bench_tok TO $ROLE"
token_arms=(set_tenant)
for alg in HS256 EdDSA RS256 ES256; do token_arms+=("$alg-fresh" "$alg-reused"); done
targs=()
for arm in "${token_arms[@]}"; do
    f=$WORK/tok_$arm.sql
    case $arm in
        set_tenant) range=$NTOK; call="tenancy.set_tenant(arg)"; sel=key ;;
        *-fresh) range=$NTOK; call="tenancy.set_tenant_token(arg)"; sel=${arm%-fresh} ;;
        *-reused) range=1; call="tenancy.set_tenant_token(arg)"; sel=${arm%-reused} ;;
    esac
    printf '%s\n' "\\set id random(1, $ROWS)" "\\set n random(1, $range)" "BEGIN;" \
        "SELECT $call FROM bench_tok WHERE arm = '$sel' AND id = :n;" \
        "SELECT v FROM t WHERE id = :id;" "END;" >"$f"
    targs+=(-f "$f@1")
done
echo
echo "3. transactions BEGIN; <set tenant from a table row>; pk lookup; END (1 client, simple protocol):"
echo "   median time per transaction / median with set_tenant(); fresh: one of $NTOK tokens, reused: the same one (cached)"
printf '  %-7s' round; printf ' %-13s' "${token_arms[@]}"; echo
declare -A tokr
for arm in "${token_arms[@]}"; do : >"$WORK/tokr.$arm"; done
for r in $(seq "$ROUNDS"); do
    run_arms tok 1 -M simple -T "$TX_SECONDS" "${targs[@]}" >"$WORK/tok.med"
    read -r _ base _ < <(sed -n 1p "$WORK/tok.med")
    printf '  %-7s' "$r"
    for i in "${!token_arms[@]}"; do
        read -r _ med _ < <(sed -n "$((i + 1))p" "$WORK/tok.med")
        [ -n "${med:-}" ] || { tn_log "an arm did not run: $(cat "$WORK/tok.med")"; exit 1; }
        v=$(ratio "$med" "$base")
        echo "$v" >>"$WORK/tokr.${token_arms[$i]}"
        printf ' %-13s' "${v}x"
    done
    echo
done
printf '  %-7s' median
for arm in "${token_arms[@]}"; do tokr[$arm]=$(median <"$WORK/tokr.$arm"); printf ' %-13s' "${tokr[$arm]}x"; done
echo

verdict() { awk -v v="$1" -v t="$2" 'BEGIN { print (v <= t) ? "meets" : "MISSES" }'; }
echo
echo "RATIOS current_tenant()/literal=${scan_cur}x ($(verdict "$scan_cur" 1.05) <= 1.05)" \
     "(SELECT current_tenant())/literal=${scan_init}x current_setting()::uuid/literal=${scan_set}x" \
     "set_tenant()/SET LOCAL=${tx_simple}x simple, ${tx_prepared}x prepared ($(verdict "$tx_simple" 1.10) <= 1.10)"
echo "TOKEN RATIOS (vs set_tenant()) HS256 fresh=${tokr[HS256-fresh]}x ($(verdict "${tokr[HS256-fresh]}" 1.15) <= 1.15)" \
     "reused: HS256=${tokr[HS256-reused]}x ($(verdict "${tokr[HS256-reused]}" 1.10) <= 1.10)" \
     "EdDSA=${tokr[EdDSA-reused]}x RS256=${tokr[RS256-reused]}x ES256=${tokr[ES256-reused]}x;" \
     "fresh: EdDSA=${tokr[EdDSA-fresh]}x RS256=${tokr[RS256-fresh]}x ES256=${tokr[ES256-fresh]}x"
