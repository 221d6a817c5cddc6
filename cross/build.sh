#!/usr/bin/env bash
# Builds meshlet for edge targets without Docker: static musl binaries for
# aarch64 and x86_64, and an armv7 hard-float binary against glibc 2.17 (old
# enough for the gateways still in the field). C parts (zstd, ring,
# mimalloc) are cross-compiled by zig through cargo-zigbuild.
#
#   cross/build.sh                      # all three, edge profile (small)
#   cross/build.sh aarch64-unknown-linux-musl
#   PROFILE=cross-ci cross/build.sh aarch64-unknown-linux-musl   # CI: faster to build
#   DEB=1 cross/build.sh                # and a .deb per target (arm64, amd64, armhf)
#   FEATURES=modbus,nats cross/build.sh # only these optional parts (cross/README.md)
#
# Binaries land in target/cross/meshlet-<target>; sizes (and xz -9 sizes,
# the download over a cellular link) are printed. With DEB=1 the packages
# land in target/cross/ too (cargo-deb, installed on first use).
# Installs what it needs when missing: zig (pip package `ziglang`),
# cargo-zigbuild, the rustup targets.
set -euo pipefail
cd "$(dirname "$0")/.."

profile="${PROFILE:-edge}"
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  targets=(aarch64-unknown-linux-musl x86_64-unknown-linux-musl armv7-unknown-linux-gnueabihf)
fi

if ! python3 -m ziglang version >/dev/null 2>&1; then
  echo "installing zig (pip: ziglang)"
  python3 -m pip install --quiet ziglang
fi
if ! command -v cargo-zigbuild >/dev/null 2>&1; then
  echo "installing cargo-zigbuild"
  cargo install --locked --quiet cargo-zigbuild
fi
if [ -n "${DEB:-}" ] && ! cargo deb --version >/dev/null 2>&1; then
  echo "installing cargo-deb"
  cargo install --locked --quiet cargo-deb --version "${CARGO_DEB_VERSION:-3.8.0}"
fi

# CARGO_TARGET_DIR is honoured (a second build while another holds the
# lock on target/); the binaries and packages still land in target/cross.
target_dir="${CARGO_TARGET_DIR:-target}"
# FEATURES (comma-separated, may be empty) replaces the default set:
# a gateway build that leaves out what it does not use.
feature_args=()
if [ -n "${FEATURES+set}" ]; then
  feature_args=(--no-default-features --features "$FEATURES")
fi
mkdir -p target/cross
for target in "${targets[@]}"; do
  rustup target add "$target" >/dev/null
  # zigbuild takes a glibc version suffix for gnu targets: the floor the
  # binary links against.
  build_target="$target"
  case "$target" in
    *-linux-gnueabihf|*-linux-gnu) build_target="$target.2.17" ;;
  esac
  echo "building $target ($profile)"
  cargo zigbuild --locked --profile "$profile" --target "$build_target" --bin meshlet ${feature_args[@]+"${feature_args[@]}"}
  out_dir="$profile"
  [ "$profile" = "dev" ] && out_dir=debug
  cp "$target_dir/$target/$out_dir/meshlet" "target/cross/meshlet-$target"
  size=$(stat -c %s "target/cross/meshlet-$target")
  xz_size=$(xz -9 --stdout "target/cross/meshlet-$target" | wc -c)
  echo "target/cross/meshlet-$target: $((size / 1024)) KiB, xz -9: $((xz_size / 1024)) KiB"
  if [ -n "${DEB:-}" ]; then
    # The architecture (arm64, amd64, armhf) follows from the target; the
    # binary is the one just built (already stripped by the profile).
    cargo deb --no-build --no-strip --target "$target" --profile "$profile" --output target/cross/
  fi
done
