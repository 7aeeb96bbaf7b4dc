#!/usr/bin/env bash
# make bench: what the data path through vigil costs, measured with pgbench.
#
# Starts a throwaway PostgreSQL 15, `vigil dev issuer` and `vigil gateway`
# as make demo does, initialises pgbench (scale 1), then runs pgbench
# select-only (-S) with the simple and the extended query protocol, each
# directly against PostgreSQL and through vigil with the same clients and
# duration, and prints tps side by side with the ratio. Through vigil,
# pgbench authenticates with an access token as its password.
#
# Tunables (environment): BENCH_CLIENTS (4), BENCH_THREADS (2),
# BENCH_SECONDS (10). KEEP=1 keeps the work dir.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../lib.sh
. "$ROOT/test/lib.sh"

CLIENTS=${BENCH_CLIENTS:-4}
THREADS=${BENCH_THREADS:-2}
SECONDS_EACH=${BENCH_SECONDS:-10}

setup bench
log "starting PostgreSQL 15, vigil dev issuer and vigil gateway in $WORK"
start_postgres
start_issuer
write_config
start_gateway
TOKEN=$("$VIGIL" dev token --issuer "$AUTHORITY" --audience api://vigil \
	--role Db.Write --app-id "$(new_guid)" --expires-in 1h)
[ -n "$TOKEN" ] || die "vigil dev token printed nothing"

log "pgbench -i -s 1 (directly)"
PGPASSWORD=$(cat "$WORK/app_rw.password") "$PGBIN/pgbench" -i -s 1 -q \
	-h 127.0.0.1 -p "$PG_PORT" -U app_rw demo >"$WORK/pgbench-init.log" 2>&1 ||
	{ cat "$WORK/pgbench-init.log" >&2; die "pgbench -i failed"; }

# run_pgbench NAME PORT USER PASSWORD MODE CLIENTS prints the tps of one run.
run_pgbench() {
	local out="$WORK/pgbench-$1.log"
	log "pgbench -S -M $5 -c $6 -j $THREADS -T $SECONDS_EACH ($1)"
	if ! PGPASSWORD=$4 timeout $((SECONDS_EACH + 60)) "$PGBIN/pgbench" -n -S -M "$5" \
		-c "$6" -j "$THREADS" -T "$SECONDS_EACH" \
		-h 127.0.0.1 -p "$2" -U "$3" demo >"$out" 2>&1; then
		tail -n 20 "$out" >&2
		tail -n 20 "$WORK/gateway.log" >&2
		die "pgbench ($1) failed"
	fi
	local tps
	tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' "$out" | tail -n 1)
	[ -n "$tps" ] || { cat "$out" >&2; die "no tps in pgbench output ($1)"; }
	echo "$tps"
}

PW=$(cat "$WORK/app_rw.password")
# Each row: protocol and clients. More clients share each journal fsync
# (group commit), so the ratio rises with concurrency.
ROWS="simple:$CLIENTS extended:$CLIENTS simple:$((CLIENTS * 4))"
declare -A TPS
for row in $ROWS; do
	mode=${row%:*} clients=${row#*:}
	TPS[$row.direct]=$(run_pgbench "$mode-$clients-direct" "$PG_PORT" app_rw "$PW" "$mode" "$clients")
	TPS[$row.vigil]=$(run_pgbench "$mode-$clients-vigil" "$GW_PORT" agent "$TOKEN" "$mode" "$clients")
done

echo
echo "pgbench select-only, scale 1, $THREADS threads, ${SECONDS_EACH}s each"
printf '%-10s %8s %12s %18s %7s\n' mode clients "direct tps" "through vigil tps" ratio
for row in $ROWS; do
	awk -v m="${row%:*}" -v c="${row#*:}" -v d="${TPS[$row.direct]}" -v v="${TPS[$row.vigil]}" \
		'BEGIN { printf "%-10s %8d %12.0f %18.0f %7.2f\n", m, c, d, v, (d > 0 ? v / d : 0) }'
done
