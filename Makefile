# vigil — build and test entry points. Run `make help` for the list.

GO        ?= go
PGBIN     ?= /usr/lib/postgresql/15/bin
# pg_query_go compiles PostgreSQL's parser (C) on its first build; later
# builds come from the Go build cache.
TEST_TIMEOUT ?= 30m
FUZZTIME  ?= 20s

export PGTEST_BINDIR := $(PGBIN)

.PHONY: help deps build test vet proto demo bench fuzz clean

help:
	@echo "make deps   install what the tests need (PostgreSQL 15, C compiler; Debian 12, as root)"
	@echo "make build  build bin/vigil"
	@echo "make test   deps, go vet and go test of every package"
	@echo "make proto  regenerate the Go code of proto/ (installs protoc-gen-go[-grpc] in bin/)"
	@echo "make demo   a throwaway PostgreSQL, dev issuer and gateway; one psql session; its audit"
	@echo "make bench  pgbench directly and through vigil gateway, with the ratio"
	@echo "make fuzz   short runs of every Fuzz* target (FUZZTIME=$(FUZZTIME) each)"
	@echo "make clean  remove bin/ and test caches"

deps:
	@sh test/deps.sh "$(PGBIN)"

build:
	$(GO) build -o bin/vigil ./cmd/vigil

vet:
	$(GO) vet ./...

proto:
	@GO=$(GO) sh proto/gen.sh

# PGTEST_REQUIRE makes internal/pgtest fail instead of skip when PostgreSQL
# is missing, and PROTO_REQUIRE the generated-code check in proto/ when
# protoc or its plugins are, so a CI run never passes by skipping.
test: deps
	$(GO) vet ./...
	PGTEST_REQUIRE=1 PROTO_REQUIRE=1 $(GO) test -timeout $(TEST_TIMEOUT) ./...

demo: deps build
	@bash test/demo/demo.sh

bench: deps build
	@bash test/bench/bench.sh
	$(GO) test -run '^$$' -bench . -benchtime 1s -timeout 20m ./...

fuzz:
	@bash test/fuzz.sh "$(FUZZTIME)"

clean:
	rm -rf bin/
	$(GO) clean -testcache
