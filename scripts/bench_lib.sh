# Sourced by scripts/bench.sh and scripts/gpu_check.sh: what both use to join
# the `bench ...` lines of our programs and PyTorch's into tables.

# The awk functions the tables are written with: field(line, "key") is the
# value of key=value in a line of `bench ...` output ("" when absent), and
# keep_best, each side's best run of a case.
awk_field='
    function field(line, key,    i, kv, n) {
        n = split(line, kv, " ")
        for (i = 1; i <= n; i++)
            if (index(kv[i], key "=") == 1)
                return substr(kv[i], length(key) + 2)
        return ""
    }
    # keep_best(name, metric, dir): of the current line ($1 its side, diffc or
    # the reference) and the best kept so far for that side and case name,
    # keeps in best[$1 " " name] the one with the smaller (dir -1) or larger
    # (dir 1) metric; cases are listed in order[1..n] as diffc first shows them.
    function keep_best(name, metric, dir,    key) {
        key = $1 " " name
        if (!(key in best) || dir * (field($0, metric) - field(best[key], metric)) > 0)
            best[key] = $0
        if ($1 == "diffc" && !seen[name]++)
            order[++n] = name
    }'

# The cuda-ops table, from lines `diffc|pytorch bench OP name=.. math=..
# fwd_ms=.. bwd_ms=.. total_ms=..` on stdin, cases in diffc's order; speed is
# PyTorch's total / diffc's (> 1: diffc faster).
cuda_ops_table() {
    awk "$awk_field"'
        {
            key = field($0, "name") " " field($0, "math")
            row[$1 " " key] = $0
            if ($1 == "diffc")
                order[++n] = key
        }
        END {
            printf "%-32s %-5s %27s %27s\n", "", "", "diffc", "pytorch"
            printf "%-32s %-5s %9s %9s %9s %9s %9s %9s %8s\n", "case", "math", "fwd", "bwd",
                   "total", "fwd", "bwd", "total", "speed"
            for (i = 1; i <= n; i++) {
                d = row["diffc " order[i]]; t = row["pytorch " order[i]]
                split(order[i], k, " ")
                printf "%-32s %-5s %9.3f %9.3f %9.3f", k[1], k[2],
                       field(d, "fwd_ms"), field(d, "bwd_ms"), field(d, "total_ms")
                if (t == "")
                    printf " (no PyTorch result)\n"
                else
                    printf " %9.3f %9.3f %9.3f %7.2fx\n", field(t, "fwd_ms"), field(t, "bwd_ms"),
                           field(t, "total_ms"), field(t, "total_ms") / field(d, "total_ms")
            }
        }'
}
