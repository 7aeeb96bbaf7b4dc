#!/bin/sh
# Installs what vigil's tests, demo and bench need on Debian 12, when it is
# missing: PostgreSQL 15 (server, psql, pgbench), a C compiler for
# pg_query_go's cgo build, Chromium for the approvals page's browser test,
# protoc and its Go plugins (in bin/) for the test that the generated code
# in proto/ is current, and, when run as root, the unprivileged user
# "vigiltest" that throwaway clusters run as (PostgreSQL refuses root).
# Quiet and quick when everything is present. Usage: deps.sh [PGBIN]
set -eu

pgbin=${1:-/usr/lib/postgresql/15/bin}
pkgs=""
[ -x "$pgbin/postgres" ] && [ -x "$pgbin/pgbench" ] || pkgs="$pkgs postgresql-15"
[ -x "$pgbin/psql" ] || pkgs="$pkgs postgresql-client-15"
command -v cc >/dev/null 2>&1 || pkgs="$pkgs gcc libc6-dev"
command -v chromium >/dev/null 2>&1 || pkgs="$pkgs chromium"
command -v protoc >/dev/null 2>&1 || pkgs="$pkgs protobuf-compiler"

if [ -n "$pkgs" ]; then
	if [ "$(id -u)" -eq 0 ]; then
		sudo=""
	elif command -v sudo >/dev/null 2>&1; then
		sudo="sudo"
	else
		echo "deps: missing packages:$pkgs; run 'make deps' as root" >&2
		exit 1
	fi
	echo "deps: installing$pkgs"
	export DEBIAN_FRONTEND=noninteractive
	$sudo apt-get update -qq
	# The package's own cluster is not wanted: tests start their own.
	$sudo apt-get install -y -qq --no-install-recommends -o Dpkg::Use-Pty=0 \
		$pkgs >/dev/null
fi

if ! command -v go >/dev/null 2>&1; then
	echo "deps: the Go toolchain (version in go.mod) is not on PATH" >&2
	exit 1
fi
sh "$(dirname "$0")/../proto/gen.sh" tools

if [ "$(id -u)" -eq 0 ] && ! id vigiltest >/dev/null 2>&1; then
	useradd --system --no-create-home --home-dir /nonexistent \
		--shell /usr/sbin/nologin vigiltest
	echo "deps: created user vigiltest (throwaway PostgreSQL clusters run as it)"
fi
