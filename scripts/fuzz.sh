#!/usr/bin/env bash
# Bounded fuzzing for CI: builds every cargo-fuzz target in fuzz/ once, then
# runs each for FUZZ_SECONDS (default 20) from its seed corpus, and fails if
# any target crashes, leaks, times out or runs out of memory.
#
# Installs what it needs when missing: a nightly toolchain (rustup, minimal
# profile) and cargo-fuzz (cargo install --locked, kept in ~/.cargo/bin).
# If no nightly can be had, it falls back to the installed stable toolchain
# with RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Zsanitizer).
#
#   scripts/fuzz.sh                         # every target, 20 s each
#   FUZZ_SECONDS=300 scripts/fuzz.sh dhcp6  # one target, longer
#
# Environment: FUZZ_SECONDS (per target), FUZZ_RSS_MB (default 2048),
# FUZZ_TIMEOUT (seconds for one input, default 10), FUZZ_TOOLCHAIN (default
# nightly), FUZZ_TARGET_DIR (default fuzz/target). The committed corpus
# (fuzz/corpus/<target>) is only read; new inputs go to
# $FUZZ_TARGET_DIR/corpus/<target>, crashes to fuzz/artifacts/<target>/
# (see fuzz/README.md to turn one into a test).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-20}
rss_mb=${FUZZ_RSS_MB:-2048}
timeout=${FUZZ_TIMEOUT:-10}
toolchain=${FUZZ_TOOLCHAIN:-nightly}
# A target dir outside the clone (CI clones afresh) keeps the ~7 min
# sanitizer build of the dependencies between runs on one machine.
target_dir=${FUZZ_TARGET_DIR:-fuzz/target}

if ! command -v rustup >/dev/null || ! command -v cargo >/dev/null; then
  echo "fuzz: rustup and cargo are needed" >&2
  exit 1
fi
if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
  echo "fuzz: installing the $toolchain toolchain" >&2
  if ! rustup toolchain install "$toolchain" --profile minimal; then
    echo "fuzz: no $toolchain toolchain; using stable with RUSTC_BOOTSTRAP=1" >&2
    toolchain=stable
    export RUSTC_BOOTSTRAP=1
  fi
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi
if [ ${#targets[@]} -eq 0 ]; then
  echo "fuzz: no targets" >&2
  exit 1
fi

# One build of every target (release, debug assertions, AddressSanitizer).
cargo +"$toolchain" fuzz build --fuzz-dir fuzz --target-dir "$target_dir"
host=$(rustc +"$toolchain" -vV | sed -n 's/^host: //p')
bin_dir=$target_dir/$host/release

passed=0
failed=()
for t in "${targets[@]}"; do
  work=$target_dir/corpus/$t
  artifacts=fuzz/artifacts/$t
  log=$target_dir/logs/$t.log
  mkdir -p "$work" "$artifacts" "$(dirname "$log")" "fuzz/corpus/$t"
  start=$(date +%s)
  if "$bin_dir/$t" "$work" "fuzz/corpus/$t" \
    -max_total_time="$seconds" -rss_limit_mb="$rss_mb" -timeout="$timeout" \
    -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1; then
    passed=$((passed + 1))
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
    echo "fuzz: $t ok: ${runs:-?} runs, ${cov:-cov: ?}, $(($(date +%s) - start)) s"
  else
    failed+=("$t")
    echo "fuzz: $t FAILED; last lines of $log:"
    { grep -v '^#' "$log" || true; } | tail -40 | sed 's/^/    /'
    { ls -1 "$artifacts" || true; } | sed "s|^|    artifact: $artifacts/|"
  fi
done

echo "fuzz: ${passed} passed, ${#failed[@]} failed"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failed targets: ${failed[*]}" >&2
  exit 1
fi
