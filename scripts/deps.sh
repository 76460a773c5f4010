#!/usr/bin/env bash
# Installs what building and testing cyphonic needs on Debian/Ubuntu:
# the tools the lab runs (iproute2, nftables, dnsmasq, tcpdump, iperf3, ping,
# dig, python3), the general-node clients the adapter is tested with
# (dhclient, dhcpcd, rdisc6) and cargo-nextest. Safe to run again.
set -euo pipefail
pkgs=(iproute2 nftables dnsmasq-base tcpdump iperf3 iputils-ping dnsutils ethtool python3 procps isc-dhcp-client dhcpcd5 ndisc6 curl)
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
if ! command -v cargo >/dev/null; then
  echo "cargo not found: install Rust from your distribution or rustup first" >&2
  exit 1
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
