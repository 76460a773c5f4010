#!/usr/bin/env bash
# The Debian package: the binary, the systemd units of the cloud, the node
# and the adapter, and the cloud's system user (docs/packaging.md). Output
# in target/debian/.
#
#   scripts/package.sh                  a release build, then the .deb
#   scripts/package.sh --profile dev    the .deb from the debug binary that
#                                       scripts/test.sh builds (stripped in
#                                       the package, fast compression)
#   scripts/package.sh check            the dev .deb, unpacked and checked:
#                                       its files and maintainer scripts,
#                                       systemd-analyze verify and security
#                                       on the units, lintian (no E: line)
#
# --no-build packages the binary as it is in target/ instead of asking
# cargo to bring it up to date first.
#
# Installs what it needs when missing: cargo-deb (cargo install --locked,
# kept in ~/.cargo/bin), and lintian, dpkg-dev, binutils and systemd from
# Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/apt.sh
find_rust

CARGO_DEB_VERSION=3.8.0
# What each unit may expose at most: systemd-analyze security shows 0.0
# (fully sandboxed) to 10.0 and takes its threshold in tenths. Today the
# cloud shows 1.5, the node 2.4, the adapter 1.9.
SECURITY_THRESHOLD=30

mode=build
profile=release
build=1
while [[ $# -gt 0 ]]; do
    case $1 in
        check) mode=check profile=dev ;;
        --profile) profile=${2:?--profile needs a name}; shift ;;
        --profile=*) profile=${1#*=} ;;
        --no-build) build=0 ;;
        *) echo "usage: $0 [check] [--profile release|dev|<profile>] [--no-build]" >&2; exit 2 ;;
    esac
    shift
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

deps() {
    install_missing dpkg-dev binutils
    if ! cargo deb --version >/dev/null 2>&1; then
        echo "package: installing cargo-deb $CARGO_DEB_VERSION" >&2
        cargo install --locked cargo-deb --version "$CARGO_DEB_VERSION"
    fi
}

# Builds the .deb and prints its path.
build_deb() {
    local args=(-p cyphonic --profile "$profile")
    if [[ $profile == release ]]; then
        # The release profile keeps debug info (debug = 1): it goes to a
        # cyphonic-dbgsym .ddeb beside the package.
        args+=(--dbgsym)
        [[ $build == 1 ]] || args+=(--no-build)
    else
        # cargo-deb would build the dev profile itself, but with its own
        # arguments; this is the build scripts/test.sh makes, so a no-op
        # after the tests. The debug binary is 250 MB: strip the packaged
        # copy and compress fast.
        [[ $build == 1 ]] && cargo build -p cyphonic --profile "$profile" >&2
        args+=(--no-build --strip --fast)
    fi
    local deb
    deb=$(cargo deb "${args[@]}" | grep '\.deb$' | tail -n 1)
    fix_synopsis "$deb"
    echo "$deb"
}

# cargo-deb takes the synopsis from the crate's description, which begins
# with the package's name (lintian: description-starts-with-package-name,
# an error) and goes on with an article (a warning). Until that
# description changes, the control file gets the rest of it; only the
# small control member of the .deb is rewritten.
fix_synopsis() {
    local deb=$1 dir=$tmp/synopsis
    mkdir "$dir"
    (
        cd "$dir"
        ar x "$deb"
        mkdir control
        tar -xf control.tar.* -C control
        grep -q '^Description: cyphonic: ' control/control || exit 0
        sed -i -E 's/^Description: cyphonic: (an? )?/Description: /' control/control
        rm control.tar.*
        tar --sort=name --owner=0 --group=0 --numeric-owner -czf control.tar.gz -C control .
        rm "$deb"
        ar rcD "$deb" debian-binary control.tar.gz data.tar.*
    )
    rm -rf "$dir"
}

check() {
    install_missing lintian systemd
    local started=$SECONDS failed=0 deb
    deb=$(build_deb)
    echo "== $deb ($(du -h "$deb" | cut -f1), built in $((SECONDS - started)) s)"
    local root=$tmp/root ctl=$tmp/control
    dpkg-deb -x "$deb" "$root"
    dpkg-deb -e "$deb" "$ctl"
    fail() { echo "FAIL: $*" >&2; failed=1; }

    echo "== files"
    local f
    [[ -f $root/usr/bin/cyphonic && -x $root/usr/bin/cyphonic ]] ||
        fail "usr/bin/cyphonic missing or not executable"
    "$root/usr/bin/cyphonic" --version >/dev/null || fail "usr/bin/cyphonic --version"
    for f in usr/lib/systemd/system/cyphonic-cloud.service \
        usr/lib/systemd/system/cyphonic-node.service \
        usr/lib/systemd/system/cyphonic-adapter@.service \
        usr/lib/sysusers.d/cyphonic.conf \
        usr/share/man/man1/cyphonic.1.gz \
        usr/share/doc/cyphonic/copyright \
        usr/share/doc/cyphonic/changelog.Debian.gz \
        usr/share/doc/cyphonic/README.md \
        usr/share/doc/cyphonic/packaging.md; do
        [[ -s $root/$f ]] || fail "$f missing or empty"
    done
    grep -qx 'u cyphonic - "cyphonic cloud" /var/lib/cyphonic-cloud' \
        "$root/usr/lib/sysusers.d/cyphonic.conf" || fail "sysusers.d: no cyphonic user"
    # State and configuration are made at install and run time, not shipped.
    [[ ! -e $root/etc && ! -e $root/var ]] || fail "the package ships /etc or /var"

    echo "== control and maintainer scripts"
    for f in postinst prerm postrm; do
        [[ -x $ctl/$f ]] || fail "$f missing or not executable"
        sh -n "$ctl/$f" || fail "$f: syntax"
    done
    grep -q 'systemd-sysusers .*cyphonic.conf' "$ctl/postinst" || fail "postinst: no systemd-sysusers"
    grep -q 'install -d -m 0755 /etc/cyphonic' "$ctl/postinst" || fail "postinst: no /etc/cyphonic"
    grep -q 'deb-systemd-helper purge' "$ctl/postrm" || fail "postrm: no purge of the units' state"
    grep -q '^Section: net$' "$ctl/control" || fail "control: section"
    grep -q '^Depends: .*systemd' "$ctl/control" || fail "control: depends"
    grep -q '^Description: cyphonic' "$ctl/control" && fail "control: synopsis starts with the name"

    echo "== systemd-analyze verify"
    # The unpacked root plus the host's units (the targets ours are ordered
    # against); ExecStart= resolves to the packaged binary.
    local vroot=$root units=(cyphonic-cloud.service cyphonic-node.service cyphonic-adapter@eth0.service)
    cp -an /usr/lib/systemd/system/. "$vroot/usr/lib/systemd/system/"
    local out
    # verify only warns (exit 0) about unknown keys and bad values: any
    # output fails the check.
    if ! out=$(systemd-analyze verify --root="$vroot" "${units[@]}" 2>&1) || [[ -n $out ]]; then
        echo "$out" >&2
        fail "systemd-analyze verify"
    fi
    # verify accepts unknown capability names silently.
    local cap
    for cap in $(sed -n 's/^\(CapabilityBoundingSet\|AmbientCapabilities\)=//p' \
        "$vroot"/usr/lib/systemd/system/cyphonic-*.service | tr ' ' '\n' | sort -u); do
        systemd-analyze capability "$cap" >/dev/null 2>&1 || fail "unknown capability $cap"
    done
    local unit score
    for unit in "${units[@]}"; do
        if ! out=$(systemd-analyze security --offline=yes --root="$vroot" \
            --threshold="$SECURITY_THRESHOLD" "$unit" 2>&1); then
            grep -E '✗|Overall' <<<"$out" >&2
            fail "$unit exposes more than $((SECURITY_THRESHOLD / 10)).$((SECURITY_THRESHOLD % 10))"
        fi
        score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out")
        echo "$unit: exposure $score (at most $((SECURITY_THRESHOLD / 10)).$((SECURITY_THRESHOLD % 10)))"
    done

    echo "== lintian"
    out=$(lintian "$deb" 2>&1 | grep -v '^running with root privileges' || true)
    grep -E '^[EW]: ' <<<"$out" || true
    grep -q '^E: ' <<<"$out" && fail "lintian reports errors"
    echo "lintian: $(grep -c '^E: ' <<<"$out") errors, $(grep -c '^W: ' <<<"$out") warnings"

    echo "== package check: $([[ $failed == 0 ]] && echo passed || echo FAILED) in $((SECONDS - started)) s"
    return "$failed"
}

deps
if [[ $mode == check ]]; then
    check
else
    build_deb
fi
