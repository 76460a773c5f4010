#!/usr/bin/env bash
# Installs what is needed, builds cyphonic and runs the local demonstration:
# a cloud and nodes in network namespaces, printing what connected and how.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/apt.sh
find_rust
scripts/deps.sh
cargo build --release -p cyphonic
exec target/release/cyphonic lab demo
