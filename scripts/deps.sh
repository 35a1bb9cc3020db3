#!/usr/bin/env bash
# Install what tenancy needs to build and test, when it is missing.
# As root: installs with apt-get.  As another user: prints the command and fails.
set -euo pipefail

PACKAGES=(postgresql-15 postgresql-server-dev-15 postgresql-15-pgtap postgresql-15-plpgsql-check
          libtap-parser-sourcehandler-pgtap-perl pgbouncer)

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

cmd="apt-get update && apt-get install -y ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
    echo "tenancy: missing packages: ${missing[*]}" >&2
    echo "tenancy: install them as root with:" >&2
    echo "    $cmd" >&2
    exit 1
fi

echo "tenancy: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq </dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
# The Debian package starts a cluster on 5432; tenancy's tests use their own.
