#!/usr/bin/env bash
# TAP: the path counters (issue 18) on the token path (issue 16), on a
# server of its own whose keys file holds an HS256 secret.  A transaction
# whose tenant came from a verified token (tenancy.set_tenant_token()) is
# counted on the new path, under the role that ran it and the token's
# tenant; the same role without a tenant, a refused token, and a role bound
# to the implicit tenant count on the legacy path; the bound role with a
# token counts on the new one.  The tokens are minted by python3-jwt.
set -u
source "$(dirname "${BASH_SOURCE[0]}")/lib/tap.bash"
tap_tmpdir DIR path-stats-token
port=$(tap_free_port)
q() { psql_at "$DIR" "$port" -d postgres "$@"; }
as() { local r=$1; shift; psql -X -q -At -v ON_ERROR_STOP=1 -h "$DIR" -p "$port" -U "$r" -d postgres "$@"; }

plan 9

python3 - "$DIR" <<'PY' || bail "python3 could not mint the tokens (python3-jwt)"
import base64, os, sys, time
import jwt
d = sys.argv[1]
now = int(time.time())
hs, other = os.urandom(32), os.urandom(32)
with open(os.path.join(d, "keys"), "w") as f:
    f.write("# kid alg key\nhs1 HS256 " + base64.b64encode(hs).decode() + "\n")
def mint(name, key, **kw):
    c = {"tenant_id": "acme", "sub": "alice", "exp": now + 3600, "iat": now}
    c.update(kw)
    with open(os.path.join(d, name + ".jwt"), "w") as f:
        f.write(jwt.encode(c, key, algorithm="HS256", headers={"kid": "hs1"}))
mint("acme", hs)
mint("bolt", hs, tenant_id="bolt", sub="bob")
mint("wrongkey", other)
PY
tok() { cat "$DIR/$1.jwt"; }

own_server_init "$DIR/data" "$port" "$DIR" "shared_preload_libraries = 'tenancy'" \
    "tenancy.worker_enabled = off" "tenancy.token_keys_file = 'token_keys'"
install -m 600 "$DIR/keys" "$DIR/data/token_keys"
own_server_run "$DIR/data"

ACME=aaaaaaaa-0000-0000-0000-000000000001
BOLT=bbbbbbbb-0000-0000-0000-000000000002
q >/dev/null <<SQL
CREATE EXTENSION tenancy;
SELECT tenancy.create_tenant('acme', 'Acme', '$ACME');
SELECT tenancy.create_tenant('bolt', 'Bolt', '$BOLT');
SELECT tenancy.set_implicit_tenant('acme');
CREATE ROLE ptk_app LOGIN;
CREATE ROLE ptk_other LOGIN;
CREATE ROLE ptk_bound LOGIN;
CREATE TABLE ptk_notes (id int PRIMARY KEY, tenant_id uuid, body text);
INSERT INTO ptk_notes VALUES (1, '$ACME', 'a'), (2, '$ACME', 'a'), (3, '$BOLT', 'b'), (4, NULL, 'legacy');
GRANT SELECT, INSERT ON ptk_notes TO ptk_app, ptk_other, ptk_bound;
SELECT tenancy.enable_rls('ptk_notes', mode => 'shadow');
SELECT tenancy.bind_role('ptk_bound');
SELECT tenancy.reset_path_stats();
SQL

# ptk_app, tenant acme from a token: one transaction, one read of the four
# rows (two hidden by enforce mode: bolt's and the NULL one) and a write of
# bolt's key (refused by enforce mode), rolled back.
out=$(as ptk_app -v t="$(tok acme)" <<SQL
BEGIN;
SELECT tenancy.set_tenant_token(:'t') = '$ACME';
SELECT count(*) FROM ptk_notes;
INSERT INTO ptk_notes VALUES (10, '$BOLT', 'stray');
ROLLBACK;
SQL
)
expect "a token sets acme for ptk_app, which reads the four rows (shadow mode)" "t
4" "$out"
expect "the token's transaction counts on the new path, for ptk_app: 1 xact, 4 read, 2 hidden, 1 written, 1 refused" \
    "new|ptk_app|1|4|2|1|1" \
    "$(q -c "SELECT path, role, xacts, rows_read, rows_hidden, rows_written, writes_refused FROM tenancy.path_stats WHERE relation = 'ptk_notes'::regclass")"
expect "and for the token's tenant, acme, on the new path" "new|$ACME|1|4|2|1|1" \
    "$(q -c "SELECT path, tenant, xacts, rows_read, rows_hidden, rows_written, writes_refused FROM tenancy.tenant_path_stats")"

# Another role, a token whose claim is bolt's slug.
as ptk_other -v t="$(tok bolt)" >/dev/null <<'SQL'
BEGIN;
SELECT tenancy.set_tenant_token(:'t');
SELECT count(*) FROM ptk_notes;
COMMIT;
SQL
expect "ptk_other with bolt's token: the new path, its own role, 3 of 4 hidden" "new|ptk_other|1|4|3" \
    "$(q -c "SELECT path, role, xacts, rows_read, rows_hidden FROM tenancy.path_stats WHERE role::text = 'ptk_other'")"
expect "and under bolt's key" "new|$BOLT|1|4|3" \
    "$(q -c "SELECT path, tenant, xacts, rows_read, rows_hidden FROM tenancy.tenant_path_stats WHERE tenant = '$BOLT'")"

# A refused token leaves no tenant: the read that follows is the legacy path.
out=$(as ptk_app -v ON_ERROR_STOP=0 -v t="$(tok wrongkey)" 2>&1 <<'SQL'
BEGIN;
SELECT tenancy.set_tenant_token(:'t');
ROLLBACK;
BEGIN;
SELECT coalesce(tenancy.current_tenant_text(), 'none');
SELECT count(*) FROM ptk_notes;
COMMIT;
SQL
)
like "a token signed by another key is refused (tenant token refused), no tenant after" "$out" "tenant token refused.*none.4$"
expect "ptk_app: the legacy path counts that read (4 of 4 hidden), the new path is unchanged" \
    "legacy|1|4|4 new|1|4|2" \
    "$(q -c "SELECT string_agg(concat_ws('|', path, xacts, rows_read, rows_hidden), ' ' ORDER BY path) FROM tenancy.path_stats WHERE role::text = 'ptk_app'")"

# A role bound to the implicit tenant (acme) is the legacy path; with a
# token it is the new path.
as ptk_bound -c "SELECT count(*) FROM ptk_notes" >/dev/null
as ptk_bound -v t="$(tok bolt)" >/dev/null <<'SQL'
BEGIN;
SELECT tenancy.set_tenant_token(:'t');
SELECT count(*) FROM ptk_notes WHERE id > 0;
COMMIT;
SQL
expect "ptk_bound: bound to acme on the legacy path (2 hidden), bolt's token on the new path (3 hidden)" \
    "legacy|1|4|2 new|1|4|3" \
    "$(q -c "SELECT string_agg(concat_ws('|', path, xacts, rows_read, rows_hidden), ' ' ORDER BY path) FROM tenancy.path_stats WHERE role::text = 'ptk_bound'")"
expect "per path: legacy 2 xacts (ptk_app without a tenant, ptk_bound bound), new 3 (the three tokens)" \
    "legacy|2|8|6 new|3|12|8" \
    "$(q -c "SELECT string_agg(concat_ws('|', path, xacts, rows_read, rows_hidden), ' ' ORDER BY path) FROM tenancy.path_activity")"
