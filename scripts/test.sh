#!/usr/bin/env bash
# Runs every test: unit, simulation, and the real network tests in
# namespaces (these need root; they build and clean up their own labs).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/apt.sh
find_rust
scripts/deps.sh
cargo build -p cyphonic
exec cargo nextest run --workspace --no-fail-fast "$@"
