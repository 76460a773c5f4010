#!/usr/bin/env bash
# Installs the peer overlays `cyphonic lab bench-peers` compares cyphonic
# with: nebula (and nebula-cert), wireguard-go and wireguard-tools (`wg`, to
# configure the userspace WireGuard devices) from Debian, and boringtun-cli
# from crates.io. Needs root for apt-get. Safe to run again: installs only
# what is missing.
set -euo pipefail
pkgs=(nebula wireguard-go wireguard-tools)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "need root to install: ${missing[*]}" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v boringtun-cli >/dev/null; then
  if ! command -v cargo >/dev/null; then
    echo "cargo not found: install Rust first (boringtun-cli comes from crates.io)" >&2
    exit 1
  fi
  # Into /usr/local so that `sudo cyphonic lab bench-peers` finds it on
  # root's PATH, whoever ran this script.
  cargo install --locked --root /usr/local boringtun-cli
fi
for tool in nebula nebula-cert wireguard-go wg boringtun-cli; do
  command -v "$tool" >/dev/null || { echo "$tool is still missing" >&2; exit 1; }
done
echo "peers: nebula, nebula-cert, wireguard-go, wg and boringtun-cli are installed"
