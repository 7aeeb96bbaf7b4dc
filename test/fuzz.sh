#!/usr/bin/env bash
# Runs every Fuzz* target in the module for a short time each.
# Usage: fuzz.sh [FUZZTIME]   (default 20s per target)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
fuzztime=${1:-20s}

found=0
for pkg in $(go list ./...); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	targets=$(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null \
		| sed 's/^func //' | sort -u || true)
	for t in $targets; do
		found=$((found + 1))
		echo "== $pkg $t ($fuzztime)"
		go test -run '^$' -fuzz "^${t}\$" -fuzztime "$fuzztime" "$pkg"
	done
done
echo "fuzz: $found target(s) run"
