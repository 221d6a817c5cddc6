#!/usr/bin/env bash
# Store v2 through the node, release builds, old against new in one run
# (issue 24's "Why" scenario; benches/README.md, "Writes to disk").
#
#   benches/store_v2_node.sh            # builds both, then RUNS=3 alternating runs
#
# Builds this checkout and BASELINE_REV (default 69c1053, main just before
# store v2 merged; checked out as a git worktree in BASELINE_DIR) with
# `cargo build --release --locked --bin meshlet` into one shared
# CARGO_TARGET_DIR (dependencies are built once), copies each binary aside,
# and runs benches/store_v2_node.py old=... new=....
# SKIP_BUILD=1 with OLD_BIN and NEW_BIN runs prebuilt binaries.
# Knobs of the run itself: RUNS, MACHINES, READINGS, BATCH, IDLE_SECS
# (see benches/store_v2_node.py).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
rev=${BASELINE_REV:-69c1053}
base=${BASELINE_DIR:-$repo/../$(basename "$repo")-baseline-$rev}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target-rel}
bins=$CARGO_TARGET_DIR/store-v2-node
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  mkdir -p "$bins"
  (cd "$repo" && cargo build --release --locked --bin meshlet)
  cp "$CARGO_TARGET_DIR/release/meshlet" "$bins/meshlet-new"
  if [ ! -d "$base" ]; then
    git -C "$repo" worktree add --detach "$base" "$rev"
  fi
  (cd "$base" && cargo build --release --locked --bin meshlet)
  cp "$CARGO_TARGET_DIR/release/meshlet" "$bins/meshlet-old"
  OLD_BIN=$bins/meshlet-old
  NEW_BIN=$bins/meshlet-new
fi
exec python3 "$repo/benches/store_v2_node.py" "old=${OLD_BIN:?}" "new=${NEW_BIN:?}"
