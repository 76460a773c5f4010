#!/usr/bin/env bash
# Installs the peer overlays `cyphonic lab bench-peers` compares cyphonic
# with: nebula (and nebula-cert), wireguard-go and wireguard-tools (`wg`, to
# configure the userspace WireGuard devices) from Debian, and boringtun-cli
# from crates.io. Needs root for apt-get. Safe to run again: installs only
# what is missing.
set -euo pipefail
source "$(dirname "$0")/apt.sh"
install_missing nebula wireguard-go wireguard-tools
if ! command -v boringtun-cli >/dev/null; then
  find_rust # boringtun-cli comes from crates.io
  # Into /usr/local so that `sudo cyphonic lab bench-peers` finds it on
  # root's PATH, whoever ran this script.
  cargo install --locked --root /usr/local boringtun-cli
fi
for tool in nebula nebula-cert wireguard-go wg boringtun-cli; do
  command -v "$tool" >/dev/null || { echo "$tool is still missing" >&2; exit 1; }
done
echo "peers: nebula, nebula-cert, wireguard-go, wg and boringtun-cli are installed"
