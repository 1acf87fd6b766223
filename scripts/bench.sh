#!/usr/bin/env bash
# CPU benchmark of the matrix-product ops (conv2d, linear: forward + backward)
# beside PyTorch on the same machine with the same thread count. Prints a
# table with the ratio of diffc's speed to PyTorch's (> 1: diffc is faster).
#   scripts/bench.sh [--threads N] [--reps N]     (threads default: nproc)
# PyTorch comes from Debian's python3-torch (/usr/bin/python3).
set -euo pipefail
cd "$(dirname "$0")/.."

threads=$(nproc) reps=5
while [[ $# -gt 0 ]]; do
    case "$1" in
    --threads) threads=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    *) echo "usage: $0 [--threads N] [--reps N]" >&2; exit 2 ;;
    esac
done

cmake -S . -B build -DDC_CUDA=OFF >/dev/null
cmake --build build -j"$(nproc)" --target bench_cpu_ops >/dev/null

ours=$(OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads build/bench_cpu_ops --reps "$reps")
theirs=$(OMP_NUM_THREADS=$threads /usr/bin/python3 scripts/bench_torch_cpu.py --threads "$threads" --reps "$reps")

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $threads threads; best of $reps runs, times in ms"
# Join the two outputs on the case name: lines are `bench OP name=N fwd_ms=.. bwd_ms=.. total_ms=.. gflops=..`.
awk '
    function field(line, key,    i, kv, n) {
        n = split(line, kv, " ")
        for (i = 1; i <= n; i++)
            if (index(kv[i], key "=") == 1)
                return substr(kv[i], length(key) + 2)
        return ""
    }
    FNR == NR { torch[field($0, "name")] = $0; next }
    FNR == 1 {
        printf "%-24s %27s %27s %8s\n", "", "diffc", "pytorch", ""
        printf "%-24s %9s %9s %9s %9s %9s %9s %8s %8s\n", "case", "fwd", "bwd", "total",
               "fwd", "bwd", "total", "GFLOP/s", "speed"
    }
    {
        name = field($0, "name"); t = torch[name]
        if (t == "") { printf "%-24s (no PyTorch result)\n", name; next }
        printf "%-24s %9.2f %9.2f %9.2f %9.2f %9.2f %9.2f %8.1f %7.2fx\n", name,
               field($0, "fwd_ms"), field($0, "bwd_ms"), field($0, "total_ms"),
               field(t, "fwd_ms"), field(t, "bwd_ms"), field(t, "total_ms"),
               field($0, "gflops"), field(t, "total_ms") / field($0, "total_ms")
    }
' <(echo "$theirs") <(echo "$ours")
