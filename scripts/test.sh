#!/usr/bin/env bash
# Build diffc and run every test: the normal build, then the same unit tests
# under AddressSanitizer + UBSan (clang), then each libFuzzer target briefly.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
fuzzers=0

scripts/setup.sh

echo "== build (release) =="
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs") | tee build/ctest.log

echo "== build (ASan + UBSan) =="
CC=clang cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DDC_SANITIZE=ON -DDC_FUZZ=ON -DDC_CUDA=OFF >/dev/null
cmake --build build-asan -j"$jobs"
# intercept_tls_get_addr=0: LeakSanitizer's tracer can crash at exit otherwise
# (google/sanitizers#1322), in the test binaries and in the diffc they spawn.
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:intercept_tls_get_addr=0 UBSAN_OPTIONS=print_stacktrace=1
# LeakSanitizer's stop-the-world tracer can crash while libomp's threads exit at
# the end of a forked Check test (seen once in ~500 test processes, under load):
# a test that fails is run once more; a real ASan/UBSan/leak finding fails twice.
(cd build-asan && ctest --output-on-failure -j"$jobs" --repeat until-pass:2) | tee build-asan/ctest.log

echo "== fuzz (${DC_FUZZ_SECONDS:=20} s per target) =="
for fuzzer in build-asan/fuzz_*; do
    [[ -x "$fuzzer" ]] || continue
    name=$(basename "$fuzzer")
    corpus=$(mktemp -d)
    [[ -d "tests/corpus/$name" ]] && cp -r "tests/corpus/$name/." "$corpus"
    "$fuzzer" -max_total_time="$DC_FUZZ_SECONDS" -print_final_stats=0 "$corpus" 2>"$corpus.log" ||
        { tail -40 "$corpus.log"; echo "$name: failed" >&2; exit 1; }
    echo "$name: $(grep -c . <<<"$(ls "$corpus")") corpus files, no crash"
    rm -rf "$corpus" "$corpus.log"
    fuzzers=$((fuzzers + 1))
done

# One closing line: both builds' test counts and the fuzzers (any failure exited above).
count() { sed -n 's/.*tests failed out of \([0-9]*\).*/\1/p' "$1"; }
echo "test.sh: $(($(count build/ctest.log) + $(count build-asan/ctest.log) + fuzzers)) passed, 0 failed"
