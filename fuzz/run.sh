#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time and prints the executions; exits non-zero on a
# crash (the reproducer is kept in fuzz/artifacts/<target>/ and printed). Used by .ci/run.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default 45 s, every target)
#
# cargo-fuzz needs unstable rustc flags (-Z sanitizer, sancov passes). This machine's toolchain
# is stable, so they are unlocked with RUSTC_BOOTSTRAP=1, which works for these flags; a nightly
# toolchain, when present, is not needed. Seeds come from fuzz/make-seeds.py (real captures in
# tests/fixtures/wire and small base-backup tars); new inputs accumulate in fuzz/corpus/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
export PATH="$HOME/.cargo/bin:$PATH" RUSTC_BOOTSTRAP=1

seconds="${1:-45}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(backend_message base_backup_stream tar_extract conninfo cluster_spec)

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
python3 make-seeds.py
cargo fuzz build >/dev/null 2>build.log || { cat build.log; exit 1; }

total=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    log="$(mktemp)"
    set +e
    cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=20 -rss_limit_mb=2048 >"$log" 2>&1
    rc=$?
    set -e
    execs="$(grep -a -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)"
    total=$((total + execs))
    if [ $rc -ne 0 ]; then
        echo "fuzz: $t FAILED after $execs executions:"
        if grep -a -q -E 'panicked|ERROR: (libFuzzer|AddressSanitizer)' "$log"; then
            grep -a -E -A12 'panicked|ERROR: (libFuzzer|AddressSanitizer)' "$log" | head -40
            grep -a -E 'Test unit written|Base64' "$log"
        else
            tail -30 "$log"
        fi
        exit 1
    fi
    echo "fuzz: $t: $execs executions in ${seconds}s, no crash (corpus: $(ls "corpus/$t" | wc -l) inputs)"
    rm -f "$log"
done
echo "fuzz: ${#targets[@]} targets, $total executions in all, no crash"
