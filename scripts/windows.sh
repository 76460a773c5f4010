#!/usr/bin/env bash
# The Windows node, built and tested from Linux (docs/windows.md).
#
#   scripts/windows.sh deps     the target, mingw-w64, NSIS and wine (Debian)
#   scripts/windows.sh test     clippy for Windows, the portable tests as
#                               Windows binaries under wine, cyphonic.exe
#                               under wine against a Linux cloud, and the
#                               installer installed and removed under wine
#
# The installer itself: scripts/build-windows.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/apt.sh
find_rust

TARGET=x86_64-pc-windows-gnu
WINE=/usr/lib/wine/wine64

deps() {
    rustup target add "$TARGET" >/dev/null
    install_missing gcc-mingw-w64-x86-64 nsis wine wine64
}

# A wine prefix of our own, with ProcessPrng (wine 8 lacks
# bcryptprimitives.dll, which Rust's standard library needs).
wine_prefix() {
    export WINEPREFIX="${CYPHONIC_WINEPREFIX:-${TMPDIR:-/tmp}/cyphonic-wine}"
    export WINEDEBUG=-all
    local sys32="$WINEPREFIX/drive_c/windows/system32"
    if [[ ! -f "$sys32/bcryptprimitives.dll" ]]; then
        "$WINE" wineboot -i </dev/null >/dev/null 2>&1 || true
        "$(dirname "$WINE")/wineserver" -w
        x86_64-w64-mingw32-gcc -shared -O2 -o "$sys32/bcryptprimitives.dll" \
            scripts/wine/bcryptprimitives.c -lbcrypt
    fi
}

stop_wine() {
    "$(dirname "$WINE")/wineserver" -k 2>/dev/null || true
}

run_test() {
    deps
    local crates=(-p cyphonic -p cyphonic-node -p cyphonic-platform -p cyphonic-proto
        -p cyphonic-pki -p cyphonic-transport)
    echo "== the Windows node carries none of the cloud's dependencies"
    if cargo tree --target "$TARGET" -p cyphonic -e normal | grep -E -q '^.*(sqlx|cyphonic-cloud |cyphonic-adapter|cyphonic-lab)'; then
        echo "the Windows build pulls in the cloud, the adapter or the lab" >&2
        exit 1
    fi
    echo "== clippy for $TARGET"
    cargo clippy --target "$TARGET" "${crates[@]}" --all-targets -- -D warnings

    wine_prefix
    trap stop_wine EXIT
    export CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER="$WINE"
    echo "== portable tests as Windows binaries under wine"
    # The port-mapping tests talk to gateways on 127.0.0.2 and up, which
    # wine's loopback does not answer from.
    cargo test --target "$TARGET" -p cyphonic-proto -p cyphonic-pki -p cyphonic-node \
        -- --skip portmap::tests::the_task_maps --skip portmap::tests::probing_a_gateway
    echo "== the platform layer's Windows code under wine (NRPT in wine's registry)"
    cargo test --target "$TARGET" -p cyphonic-platform --lib -- dns:: ipconfig::

    echo "== cyphonic.exe under wine against a Linux cloud"
    cargo build --target "$TARGET" -p cyphonic
    cargo build -p cyphonic
    CYPHONIC_WINDOWS_EXE="$PWD/target/$TARGET/debug/cyphonic.exe" CYPHONIC_WINE="$WINE" \
        cargo nextest run -p cyphonic --test windows_wine --run-ignored only

    echo "== the installer under wine"
    scripts/build-windows.sh --profile dev
    CYPHONIC_WINE="$WINE" CYPHONIC_INSTALLER="$PWD/target/windows/cyphonic-setup.exe" \
        cargo nextest run -p cyphonic --test windows_installer --run-ignored only
}

case "${1:-}" in
    deps) deps ;;
    test) run_test ;;
    *)
        echo "usage: $0 deps|test" >&2
        exit 2
        ;;
esac
