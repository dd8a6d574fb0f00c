#!/usr/bin/env bash
# Where a real run's rounds spent their time, from its peers' logs (the "round done" lines of
# `launch run`): medians of compute, exchange and round seconds, and the shares of all the
# rounds' wall time spent computing, exchanging and forming groups (the rest of each round).
# Each peer's first SKIP rounds (default 1: the first includes start-up) are left out.
#
#   scripts/round-times.sh [--skip SKIP] LOG…
#   e.g. scripts/round-times.sh out/ov/p*.log
set -euo pipefail
skip=1
if [ "${1:-}" = "--skip" ]; then
    skip="${2:?--skip needs a number}"
    shift 2
fi
[ "$#" -gt 0 ] || { echo "usage: round-times.sh [--skip SKIP] LOG…" >&2; exit 2; }
for log in "$@"; do
    grep -h "round done" "$log" | awk -v skip="$skip" '
        {
            for (i = 1; i <= NF; i++) {
                split($i, kv, "=")
                field[kv[1]] = kv[2]
            }
            if (field["round"] > skip)
                print field["compute_secs"], field["comm_secs"], field["round_secs"]
        }'
done | awk '
    { compute[NR] = $1; comm[NR] = $2; round[NR] = $3; c += $1; x += $2; r += $3 }
    function median(a,    n, i, j, t, s) {
        n = 0
        for (i in a) s[++n] = a[i]
        for (i = 2; i <= n; i++) {
            t = s[i]
            for (j = i - 1; j >= 1 && s[j] > t; j--) s[j + 1] = s[j]
            s[j + 1] = t
        }
        return n % 2 ? s[(n + 1) / 2] : (s[n / 2] + s[n / 2 + 1]) / 2
    }
    END {
        if (NR == 0) { print "no \"round done\" lines past the skipped rounds" > "/dev/stderr"; exit 1 }
        printf "peer-rounds %d: median compute %.3f s, exchange %.3f s, round %.3f s\n",
            NR, median(compute), median(comm), median(round)
        printf "share of the rounds'"'"' wall time: compute %.1f %%, exchange %.1f %%, forming groups and the rest %.1f %%\n",
            100 * c / r, 100 * x / r, 100 * (r - c - x) / r
    }'
