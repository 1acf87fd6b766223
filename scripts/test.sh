#!/usr/bin/env bash
# Build diffc and run every test: the normal build, then the same unit tests
# under AddressSanitizer + UBSan (clang), then each libFuzzer target briefly.
# Every stage runs even when an earlier one failed; the closing line counts
# them all, and the exit status is 1 when anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
passed=0 failed=0 skipped=0 failures=()

scripts/setup.sh || exit 1

# ctest's own summary: "N% tests passed, F tests failed out of T", and the skipped ones.
tally() { # LOG STAGE
    local total fail skip
    total=$(sed -n 's/.*tests failed out of \([0-9]*\).*/\1/p' "$1")
    fail=$(sed -n 's/.* \([0-9]*\) tests failed out of.*/\1/p' "$1")
    skip=$(grep -c '(Skipped)' "$1")
    if [[ -z $total ]]; then
        failed=$((failed + 1)) failures+=("$2: no test summary")
        return
    fi
    passed=$((passed + total - fail - skip)) failed=$((failed + fail)) skipped=$((skipped + skip))
    ((fail == 0)) || failures+=("$2: $fail failed")
}

stage_fail() { failed=$((failed + 1)) failures+=("$1"); }

echo "== build (release) =="
if cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null && cmake --build build -j"$jobs"; then
    (cd build && ctest --output-on-failure -j"$jobs") | tee build/ctest.log
    tally build/ctest.log release
else
    stage_fail "release: build failed"
fi

echo "== build (ASan + UBSan) =="
# intercept_tls_get_addr=0: LeakSanitizer's tracer can crash at exit otherwise
# (google/sanitizers#1322), in the test binaries and in the diffc they spawn.
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:intercept_tls_get_addr=0 UBSAN_OPTIONS=print_stacktrace=1
# Check's per-test timeouts are set for the release build; the unoptimised
# sanitizer build runs the kernels 10-40 times slower (test_unet's gradient
# checks passed 60 s on a 2-core AMD EPYC).
export CK_TIMEOUT_MULTIPLIER=4
if CC=clang cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DDC_SANITIZE=ON -DDC_FUZZ=ON -DDC_CUDA=OFF >/dev/null &&
    cmake --build build-asan -j"$jobs"; then
    # LeakSanitizer's stop-the-world tracer can crash while libomp's threads exit at
    # the end of a forked Check test (seen once in ~500 test processes, under load):
    # a test that fails is run once more; a real ASan/UBSan/leak finding fails twice.
    (cd build-asan && ctest --output-on-failure -j"$jobs" --repeat until-pass:2) | tee build-asan/ctest.log
    tally build-asan/ctest.log asan
else
    stage_fail "asan: build failed"
fi

echo "== fuzz (${DC_FUZZ_SECONDS:=20} s per target) =="
for fuzzer in build-asan/fuzz_*; do
    [[ -x "$fuzzer" ]] || continue
    name=$(basename "$fuzzer")
    corpus=$(mktemp -d)
    [[ -d "tests/corpus/$name" ]] && cp -r "tests/corpus/$name/." "$corpus"
    if "$fuzzer" -max_total_time="$DC_FUZZ_SECONDS" -print_final_stats=0 "$corpus" 2>"$corpus.log"; then
        echo "$name: $(find "$corpus" -type f | wc -l) corpus files, no crash"
        passed=$((passed + 1))
    else
        tail -40 "$corpus.log"
        stage_fail "$name: crashed"
    fi
    rm -rf "$corpus" "$corpus.log"
done

summary="test.sh: $passed passed, $failed failed, $skipped skipped"
((failed == 0)) || summary+=" ($(IFS=';'; echo "${failures[*]}"))"
echo "$summary"
((failed == 0))
