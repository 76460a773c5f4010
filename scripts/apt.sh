# Sourced by the install scripts: `install_missing pkg...` installs, with
# apt-get and without recommends (some pull in a kernel), the Debian
# packages that are not installed yet; it needs root only when one is
# missing.
install_missing() {
  local missing=() p
  for p in "$@"; do
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
}

# `find_rust`: puts cargo on PATH when it is not there, as under sudo,
# whose root PATH lacks the invoking user's ~/.cargo/bin (and root has no
# rustup toolchain of its own); fails with a clear message without Rust.
find_rust() {
  command -v cargo >/dev/null && return 0
  local home
  for home in "${CARGO_HOME:-$HOME/.cargo}" ${SUDO_USER:+"$(getent passwd "$SUDO_USER" | cut -d: -f6)/.cargo"}; do
    if [ -x "$home/bin/cargo" ]; then
      export PATH="$home/bin:$PATH" CARGO_HOME="$home"
      if [ -z "${RUSTUP_HOME:-}" ] && [ -d "$(dirname "$home")/.rustup" ]; then
        export RUSTUP_HOME="$(dirname "$home")/.rustup"
      fi
      return 0
    fi
  done
  echo "cargo not found: install Rust from your distribution or rustup first" >&2
  exit 1
}
