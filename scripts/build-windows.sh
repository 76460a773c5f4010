#!/usr/bin/env bash
# Builds the Windows node and its installer from Linux (docs/windows.md):
# cyphonic.exe and cyphonic-starter.exe for x86_64-pc-windows-gnu (Debian's
# mingw-w64), wintun.dll from the wintun-bindings crate, and
# target/windows/cyphonic-setup.exe made by makensis (Debian's nsis).
#
#   scripts/build-windows.sh [--profile release|dev] [--root root.pem]
#
# --root puts the cloud's root certificate in the installer, so the
# starter needs no file from the user.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/apt.sh
find_rust

TARGET=x86_64-pc-windows-gnu
profile=release
root=""
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --root) root="$2"; shift 2 ;;
    *) echo "usage: $0 [--profile release|dev] [--root root.pem]" >&2; exit 2 ;;
  esac
done
case "$profile" in
  release) dir=release ;;
  dev) dir=debug ;;
  *) echo "--profile is release or dev" >&2; exit 2 ;;
esac

rustup target add "$TARGET" >/dev/null
install_missing gcc-mingw-w64-x86-64 nsis

cargo build --profile "$profile" --target "$TARGET" -p cyphonic --bins

# wintun.dll ships inside the wintun-bindings crate, per architecture.
bindings=$(cargo metadata --format-version 1 --filter-platform "$TARGET" |
  python3 -c 'import json,sys; m=json.load(sys.stdin); print(next(p["manifest_path"] for p in m["packages"] if p["name"]=="wintun-bindings"))')
wintun="$(dirname "$bindings")/wintun/bin/amd64/wintun.dll"

stage=target/windows/stage
rm -rf "$stage"
mkdir -p "$stage"
for exe in cyphonic cyphonic-starter; do
  # Debug information stays in target/; the installer carries the code.
  x86_64-w64-mingw32-strip -o "$stage/$exe.exe" "target/$TARGET/$dir/$exe.exe"
done
cp "$wintun" "$stage/wintun.dll"
if [ -n "$root" ]; then
  cp "$root" "$stage/root.pem"
fi

version=$(cargo metadata --format-version 1 --no-deps |
  python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="cyphonic"))')
makensis -V2 -DVERSION="$version" -DSTAGE="$PWD/$stage" \
  -DOUTFILE="$PWD/target/windows/cyphonic-setup.exe" packaging/windows/cyphonic.nsi
echo "built target/windows/cyphonic-setup.exe ($version, $profile)"
