# rtc-recorder — the two commands a new user needs: `make run` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
# One profile for everything: the service, the tests and the benchmarks share one build.
CARGO_FLAGS ?=
BIN_DIR = $(or $(CARGO_TARGET_DIR),target)/debug

.PHONY: all setup build run test test-services-stop bench fmt lint clean

all: build

setup:
	@scripts/setup.sh

build: setup
	@$(CARGO) build --workspace --bins $(CARGO_FLAGS)

# Starts the service on config.toml's defaults: state under ./data, artefacts on the local
# filesystem. Prints the URL and the API key to use.
run: build
	@exec $(BIN_DIR)/rtc-recorder

# Installs and starts what the tests need (the storage servers: s3s-fs, Azurite,
# gcp-storage-emulator, sshd, all on loopback), then runs the whole suite: unit tests of both
# crates, the storage conformance and upload-queue suites against those servers, and the
# black-box tests that drive the real binary over HTTP.
test: setup
	@scripts/test-services.sh start
	@scripts/test-setup.sh
	@$(CARGO) test --workspace --no-fail-fast $(CARGO_FLAGS) -- --color never

# Stops the storage servers `make test` started.
test-services-stop:
	@scripts/test-services.sh stop

fmt:
	@$(CARGO) fmt --all

lint:
	@$(CARGO) fmt --all -- --check
	@$(CARGO) clippy --workspace --all-targets $(CARGO_FLAGS) -- -D warnings

clean:
	@$(CARGO) clean
