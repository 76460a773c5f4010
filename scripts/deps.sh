#!/usr/bin/env bash
# Installs what building and testing cyphonic needs on Debian/Ubuntu:
# the tools the lab runs (iproute2, nftables, dnsmasq, tcpdump, iperf3, ping,
# dig, python3), the UPnP/PCP router the NAT lab maps ports through
# (miniupnpd-nftables: the daemon alone, no service), the general-node
# clients the adapter is tested with (dhclient, dhcpcd, rdisc6), the
# browser the web console is tested in (chromium, chromium-driver), the
# PostgreSQL server the store's tests start private clusters of
# (postgresql: initdb and postgres under /usr/lib/postgresql/<version>/bin;
# the tests use no system cluster) and cargo-nextest. Safe to run again.
set -euo pipefail
source "$(dirname "$0")/apt.sh"
install_missing iproute2 nftables dnsmasq-base tcpdump iperf3 iputils-ping dnsutils ethtool python3 procps miniupnpd-nftables isc-dhcp-client dhcpcd5 ndisc6 curl chromium chromium-driver postgresql
find_rust
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
