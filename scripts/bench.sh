#!/usr/bin/env bash
# CPU benchmark of the matrix-product ops (conv2d, linear: forward + backward)
# beside PyTorch on the same machine with the same thread count. Prints a
# table with the ratio of diffc's speed to PyTorch's (> 1: diffc is faster).
#   scripts/bench.sh [--threads N] [--reps N] [--runs N]
# threads default to nproc; each program times every case --reps times and
# keeps the best; --runs N alternates the two programs N times and keeps each
# side's best run per case (for a busy machine).
# PyTorch comes from Debian's python3-torch (/usr/bin/python3).
set -euo pipefail
cd "$(dirname "$0")/.."

threads=$(nproc) reps=5 runs=1
while [[ $# -gt 0 ]]; do
    case "$1" in
    --threads) threads=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    *) echo "usage: $0 [--threads N] [--reps N] [--runs N]" >&2; exit 2 ;;
    esac
done

cmake -S . -B build -DDC_CUDA=OFF >/dev/null
cmake --build build -j"$(nproc)" --target bench_cpu_ops >/dev/null

# Lines `diffc|pytorch bench OP name=N fwd_ms=.. bwd_ms=.. total_ms=.. gflops=..`.
results=$(for ((i = 0; i < runs; i++)); do
    OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads build/bench_cpu_ops --reps "$reps" |
        sed 's/^/diffc /'
    OMP_NUM_THREADS=$threads /usr/bin/python3 scripts/bench_torch_cpu.py --threads "$threads" \
        --reps "$reps" | sed 's/^/pytorch /'
done)

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $threads threads;" \
     "best of $reps repetitions x $runs runs; times in ms"
awk '
    function field(line, key,    i, kv, n) {
        n = split(line, kv, " ")
        for (i = 1; i <= n; i++)
            if (index(kv[i], key "=") == 1)
                return substr(kv[i], length(key) + 2)
        return ""
    }
    {   # keep each side'"'"'s fastest run of each case, cases in first-seen order
        key = $1 " " field($0, "name")
        if (!(key in best) || field($0, "total_ms") + 0 < field(best[key], "total_ms") + 0)
            best[key] = $0
        if ($1 == "diffc" && !seen[field($0, "name")]++)
            order[++n] = field($0, "name")
    }
    END {
        printf "%-24s %27s %27s\n", "", "diffc", "pytorch"
        printf "%-24s %9s %9s %9s %9s %9s %9s %8s %8s\n", "case", "fwd", "bwd", "total",
               "fwd", "bwd", "total", "GFLOP/s", "speed"
        for (i = 1; i <= n; i++) {
            d = best["diffc " order[i]]; t = best["pytorch " order[i]]
            if (t == "") { printf "%-24s (no PyTorch result)\n", order[i]; continue }
            printf "%-24s %9.2f %9.2f %9.2f %9.2f %9.2f %9.2f %8.1f %7.2fx\n", order[i],
                   field(d, "fwd_ms"), field(d, "bwd_ms"), field(d, "total_ms"),
                   field(t, "fwd_ms"), field(t, "bwd_ms"), field(t, "total_ms"),
                   field(d, "gflops"), field(t, "total_ms") / field(d, "total_ms")
        }
    }
' <<<"$results"
