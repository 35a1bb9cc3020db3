#!/usr/bin/env bash
# make bench: run every benchmark in bench/ (each bench/*.sh but this one).
# Each benchmark builds, installs, starts its own throwaway cluster and prints
# ratios against a baseline measured in the same run.
# Narrow with BENCH="context rls".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
status=0
for f in bench/*.sh; do
    name=$(basename "$f" .sh)
    [ "$name" = run ] && continue
    case " ${BENCH:-$name} " in *" $name "*) ;; *) continue ;; esac
    echo "=== bench: $name"
    bash "$f" || { echo "bench $name failed" >&2; status=1; }
done
exit $status
