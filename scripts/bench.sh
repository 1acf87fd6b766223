#!/usr/bin/env bash
# diffc beside PyTorch on the same machine, as tables with the ratio of
# diffc's speed to PyTorch's (> 1: diffc is faster). Sections:
#   ops    the matrix-product ops on the CPU (conv2d, linear: forward + backward),
#          both sides with the same thread count
#   data   serving augmented batches (data/loader) beside torchvision's
#          DataLoader, and building a dataset cache from a folder of JPEGs
#          and PNGs beside PIL, for 1 and N threads / workers
#   sample images/s of 50-step DDIM sampling (dc_generate, what `diffc sample`
#          runs) beside diffusers' DDIMPipeline, random weights, same threads:
#          configs/fashion-mnist.json's model at batch 64, and the DDPM paper's
#          CIFAR-10 model (configs/cifar10-ddpm.json) shortened to batch 4 and
#          10 steps (about 6 GFLOP per image and step)
#   train  whole training steps of `diffc train` (configs/fashion-mnist.json at
#          its batch, configs/cifar10-ddpm.json at a small one) beside diffusers'
#          train_unconditional step: images/s, peak memory, and the FLOP/s each
#          reaches as a share of the machine's OpenBLAS sgemm
#   dist   the gradient all-reduce: on a GPU its cost per step through NCCL at
#          world 1 and the share the overlap with the backward pass hides; on
#          the CPU two MPI ranks, one bucket against overlapped buckets
#   blip   captioning with BLIP base (configs/blip-base/config.json, random weights):
#          images/s of the vision model plus greedy and 3-beam decoding of 20
#          tokens per image (no early stop) beside transformers' generate(), same
#          threads, and both sides' peak memory
#   sd     text-to-image with a full-size Stable Diffusion 1.5 pipeline of random
#          weights (scripts/make_sd_pipeline.py, made once into build/bench-sd):
#          seconds per denoising step at 256x256 and 512x512, batch 1 with
#          guidance 7.5 (two UNet rows), float32, beside diffusers'
#          StableDiffusionPipeline and stable-diffusion.cpp (stable-diffusion-cpp-python
#          in $SDCPP_PYTHON, default the diffusers python; skipped when absent), and
#          each side's peak memory. diffc's conv and linear weights are f16
#          ($SD_WEIGHTS_DTYPE: f16 or f32, diffc sample --weights-dtype)
#   ckpt   gradient checkpointing (train --gradient-checkpointing): the activation
#          memory a training step holds per image and its time, without and with,
#          for configs/fashion-mnist.json at its batch, configs/cifar10-ddpm.json
#          at batch 8, and the SD-1.5 UNet (configs/sd15-unet, random frozen
#          weights: no 3.4 GB of gradient buffers, the same activations) at
#          256x256 and 512x512, batch 1; 512 without checkpoints only where the
#          host has 16 GB available (it holds about 13 GB). On a GPU (not run
#          here): build-cuda/bench_checkpoint ... --device cuda
#   cuda-ops  conv2d, linear, group_norm and attention at UNet shapes on the GPU,
#          forward and backward, TF32 and bf16, beside PyTorch (channels_last,
#          autocast bf16, SDPA); skipped without nvcc or a GPU. Built in build-cuda.
#   sd-train  fine-tuning the same SD-1.5 architecture ($SD_TRAIN_MODEL, default the
#          sd section's build/bench-sd/sd15, made when absent): seconds per training step
#          (batch 1, f32, AdamW, clipping; VAE latents and text embeds precomputed on both
#          sides) for $SD_TRAIN_CASES (SIZE-MODE, MODE full, lora (rank 4) or full-ckpt
#          (gradient checkpointing); default "256-full 256-lora 512-lora 512-full-ckpt"),
#          beside diffusers' train_text_to_image(_lora) step
#          (scripts/bench_sd_train_torch.py), and each side's peak memory (diffc:
#          /usr/bin/time's max RSS of the whole run). Needs ~17 GB for a full fine-tune.
#   scripts/bench.sh [ops] [data] [sample] [train] [dist] [blip] [sd] [sd-train] [ckpt] [cuda-ops] [--threads N] [--reps N] [--runs N]
#                    [--isa native|avx512|avx2|baseline]
#   (every section when none is named; threads default: nproc). --isa makes
#   both sides use at most that vector ISA: diffc's kernels (DC_CPU_ISA),
#   OpenBLAS's (OPENBLAS_CORETYPE: Haswell is what AMD Zen runs), PyTorch's
#   (ATEN_CPU_CAPABILITY) and oneDNN's (ONEDNN_MAX_CPU_ISA); native: each
#   picks the best the CPU has. Each program
#   times a case --reps times and keeps the best (sample: once, the runs are
#   long; blip: --reps 2); for ops, sample, train, blip and sd, --runs N alternates the programs N
#   times and keeps each side's best run (a busy machine).
# PyTorch and diffusers for ops, sample and train come from $DIFFUSERS_PYTHON
# (default /tmp/dvenv/bin/python): a venv with torch and diffusers from PyPI
# (python3 -m venv /tmp/dvenv && /tmp/dvenv/bin/pip install torch diffusers);
# the data section uses Debian's python3-torch and torchvision (/usr/bin/python3),
# cuda-ops $TORCH_PYTHON (the GPU machine's venv), blip $TRANSFORMERS_PYTHON (default
# the same as ops: a venv with transformers too). The tables name the versions.
set -euo pipefail
cd "$(dirname "$0")/.."

threads=$(nproc) reps=5 runs=1 isa=native sections=()
while [[ $# -gt 0 ]]; do
    case "$1" in
    ops | data | sample | train | dist | blip | sd | sd-train | ckpt | cuda-ops) sections+=("$1"); shift ;;
    --threads) threads=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --isa) isa=$2; shift 2 ;;
    *) echo "usage: $0 [ops] [data] [sample] [train] [dist] [blip] [sd] [sd-train] [ckpt] [cuda-ops] [--threads N] [--reps N] [--runs N]" \
            "[--isa native|avx512|avx2|baseline]" >&2; exit 2 ;;
    esac
done
[[ ${#sections[@]} -gt 0 ]] || sections=(ops data sample train dist blip sd sd-train ckpt cuda-ops)

case "$isa" in
native) ;;
avx512) export DC_CPU_ISA=avx512 OPENBLAS_CORETYPE=SkylakeX ATEN_CPU_CAPABILITY=avx512 ONEDNN_MAX_CPU_ISA=AVX512_CORE ;;
avx2) export DC_CPU_ISA=avx2 OPENBLAS_CORETYPE=Haswell ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 ;;
baseline) export DC_CPU_ISA=baseline OPENBLAS_CORETYPE=Prescott ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 ;;
*) echo "$0: --isa must be native, avx512, avx2 or baseline, got '$isa'" >&2; exit 2 ;;
esac
python=${DIFFUSERS_PYTHON:-/tmp/dvenv/bin/python}
versions=$("$python" -c 'import torch, diffusers; print(f"torch {torch.__version__}, diffusers {diffusers.__version__}")' \
    2>/dev/null || echo "no torch/diffusers in $python")
machine="$(lscpu | sed -n 's/^Model name: *//p'), ISA $isa; $versions"

# awk_field and cuda_ops_table
source scripts/bench_lib.sh

# Build targets: build_cpu in build/ (CUDA off), build_cuda in build-cuda/
# (CUDA on, for sm_80 and sm_90), unless $BENCH_CUDA_BUILD names a CUDA build
# made already (scripts/gpu_check.sh's). $cuda_build is the folder used.
build_cpu() {
    cmake -S . -B build -DDC_CUDA=OFF >/dev/null
    cmake --build build -j"$(nproc)" --target "$@" >/dev/null
}
# The CPU kernels diffc runs here (its run-time ISA choice, DC_CPU_ISA
# honoured, and OpenBLAS's core), named in the CPU tables' headings.
cpu_kernels() {
    build_cpu diffc
    build/diffc --help | sed -n 's/^CPU kernels: \(.*\) (DC_CPU_ISA.*/\1/p'
}
cuda_build=${BENCH_CUDA_BUILD:-build-cuda}
build_cuda() {
    [[ -n ${BENCH_CUDA_BUILD:-} ]] && return
    cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build build-cuda -j"$(nproc)" --target "$@" >/dev/null
}

# ---- ops: conv2d and linear on the CPU ----

bench_ops() {
    build_cpu bench_cpu_ops
    local results
    # Lines `diffc|pytorch bench OP name=N fwd_ms=.. bwd_ms=.. total_ms=.. gflops=..`.
    results=$(for ((i = 0; i < runs; i++)); do
        OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads build/bench_cpu_ops --reps "$reps" |
            sed 's/^/diffc /'
        OMP_NUM_THREADS=$threads "$python" scripts/bench_torch_cpu.py --threads "$threads" \
            --reps "$reps" | sed 's/^/pytorch /'
    done)

    echo "== ops: $machine, diffc kernels $(cpu_kernels), $threads threads; best of $reps repetitions x $runs runs; times in ms"
    awk "$awk_field"'
        { keep_best(field($0, "name"), "total_ms", -1) } # the fastest run
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
}

# ---- data: the loader and the dataset cache ----

# Thread counts compared: 1 and $threads (diffc worker threads or OpenMP
# threads; PyTorch DataLoader workers, plus 0, its main-process mode).
bench_data() {
    local list=1 folder=build/bench-data/folder images=1000
    [[ $threads -gt 1 ]] && list="1,$threads"
    build_cpu bench_loader bench_cache
    if [[ ! -e $folder/.done ]]; then
        rm -rf "$folder"
        /usr/bin/python3 scripts/bench_torch_data.py make-folder "$folder" --count "$images"
        touch "$folder/.done"
    fi

    local ours theirs
    ours=$(build/bench_loader --seconds 1 --reps "$reps" --threads "$list")
    theirs=$(/usr/bin/python3 scripts/bench_torch_data.py serve --seconds 1 --reps "$reps" --workers "0,$list")
    echo "== data, serving batches: $machine; best of $reps runs of 1 s, images/s"
    echo "   diffc: loader worker threads; torch: DataLoader num_workers (0: in the main process),"
    echo "   pil = a PIL image per item (torchvision's datasets), array = transforms on the array;"
    echo "   the ratio is to the faster torch way (for 1 thread: with 0 or 1 workers)"
    # Lines are `bench loader name=N threads=T ...` (ours), `... workers=W mode=M ...` (torch).
    awk "$awk_field"'
        FNR == NR {
            name = field($0, "name"); w = field($0, "workers") + 0
            torch[name, w, field($0, "mode")] = field($0, "images_per_s")
            if (!(name in seen)) { seen[name] = 1; order[++n] = name }
            if (w > top) top = w
            next
        }
        { ours[field($0, "name"), field($0, "threads") + 0] = field($0, "images_per_s") }
        END {
            printf "%-26s %7s %11s %11s %11s %11s\n", "case", "threads", "diffc", "torch pil",
                   "torch array", "diffc/torch"
            for (i = 1; i <= n; i++)
                for (t = 0; t <= top; t++) {
                    p = torch[order[i], t, "pil"]; a = torch[order[i], t, "array"]; d = ours[order[i], t]
                    if (p == "" && a == "" && d == "") continue
                    best = 0 # the faster torch way; for 1 thread, with 0 or 1 workers
                    for (w = t == 1 ? 0 : t; w <= t; w++)
                        for (m = 0; m < 2; m++)
                            if (torch[order[i], w, m ? "pil" : "array"] + 0 > best)
                                best = torch[order[i], w, m ? "pil" : "array"] + 0
                    printf "%-26s %7d %11s %11s %11s %11s\n", order[i], t, d == "" ? "-" : d, p, a,
                           d == "" || best == 0 ? "-" : sprintf("%.1fx", d / best)
                }
        }
    ' <(echo "$theirs") <(echo "$ours")

    local t
    ours=$(for t in ${list//,/ }; do
        OMP_NUM_THREADS=$t build/bench_cache "$folder" --reps "$reps" | sed "s/\$/ threads=$t/"
    done)
    theirs=$(/usr/bin/python3 scripts/bench_torch_data.py cache "$folder" --reps "$reps" --workers "0,$list")
    echo "== data, building a cache: $images images 256x256 (half JPEG, half PNG) to 64x64 RGB;"
    echo "   $machine; best of $reps runs, images/s"
    echo "   diffc: dc_dataset_open, OpenMP threads; torch: ImageFolder + PIL resize(BICUBIC) through a"
    echo "   DataLoader, num_workers (0: in the main process; 1 thread is compared with the better of 0 and 1)"
    awk "$awk_field"'
        FNR == NR { w = field($0, "workers") + 0; torch[w] = field($0, "images_per_s"); if (w > top) top = w; next }
        field($0, "name") == "reopen" { reopen[field($0, "threads")] = field($0, "images_per_s"); next }
        { ours[field($0, "threads") + 0] = field($0, "images_per_s") }
        END {
            printf "%-26s %7s %11s %11s %11s\n", "case", "threads", "diffc", "torch", "diffc/torch"
            for (t = 0; t <= top; t++) {
                theirs = t == 1 && torch[0] + 0 > torch[1] + 0 ? torch[0] : torch[t]
                d = ours[t]
                printf "%-26s %7d %11s %11s %11s\n", "folder_256_to_64", t, d == "" ? "-" : d, torch[t],
                       d == "" || theirs == 0 ? "-" : sprintf("%.2fx", d / theirs)
            }
            for (t = 0; t <= top; t++)
                if (t in reopen)
                    printf "%-26s %7d %11s %11s %11s\n", "reopen the cache", t, reopen[t], "-", "-"
        }
    ' <(echo "$theirs") <(echo "$ours")
}

# ---- sample: DDIM sampling beside diffusers ----

bench_sample() {
    build_cpu bench_sample bench_sgemm
    # config batch steps, one case per line
    local cases="configs/fashion-mnist.json 64 50
configs/cifar10-ddpm.json 4 10"
    local results config batch steps
    # Lines `diffc|diffusers bench sample config=C batch=N steps=S ... seconds=T images_per_s=I`.
    results=$(for ((i = 0; i < runs; i++)); do
        OMP_NUM_THREADS=$threads build/bench_sgemm --reps "$reps" | sed 's/^/sgemm /'
        while read -r config batch steps; do
            OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads build/bench_sample --config "$config" \
                --batch "$batch" --steps "$steps" --reps 1 | sed 's/^/diffc /'
            OMP_NUM_THREADS=$threads "$python" scripts/bench_sample_torch.py --config "$config" \
                --batch "$batch" --steps "$steps" --reps 1 --threads "$threads" | sed 's/^/diffusers /'
        done <<<"$cases"
    done)

    echo "== sample: $machine, diffc kernels $(cpu_kernels), $threads threads; DDIM, random weights; best of $runs runs; images/s;"
    echo "   GFLOP/s from the forward's conv/linear/attention FLOPs (diffusers side, hooks) per step,"
    echo "   as a share of OpenBLAS cblas_sgemm 2048x2048 on the same threads (its best run)"
    awk "$awk_field"'
        $1 == "sgemm" { if (field($0, "gflops") + 0 > sgemm) sgemm = field($0, "gflops") + 0; next }
        { keep_best(field($0, "config"), "seconds", -1) } # the fastest run
        END {
            printf "sgemm: %.1f GFLOP/s\n", sgemm
            printf "%-26s %5s %5s %9s %8s %9s %7s %14s %14s\n", "model", "batch", "steps", "params",
                   "diffc", "diffusers", "speed", "diffc % sgemm", "diff. % sgemm"
            for (i = 1; i <= n; i++) {
                d = best["diffc " order[i]]; t = best["diffusers " order[i]]
                if (t == "") { printf "%-30s (no diffusers result)\n", order[i]; continue }
                flop = field(d, "steps") * field(t, "fwd_gflop_per_image") # per image
                printf "%-26s %5s %5s %9s %8.2f %9.2f %6.2fx %13.0f%% %13.0f%%\n", order[i],
                       field(d, "batch"), field(d, "steps"), field(d, "params"), field(d, "images_per_s"),
                       field(t, "images_per_s"), field(t, "seconds") / field(d, "seconds"),
                       100 * field(d, "images_per_s") * flop / sgemm,
                       100 * field(t, "images_per_s") * flop / sgemm
            }
        }
    ' <<<"$results"
}

# ---- train: whole training steps ----

# One `diffc train` run of $4 steps: prints `bench train config=.. batch=..
# images_per_s=.. peak_rss_mb=.. peak_arena_mb=..`, the best step after $warmup
# (metrics.jsonl holds each step's images/s: loading, noising, forward,
# backward, clipping, AdamW and EMA), the process's peak resident memory
# (which includes writing the final checkpoint; the steps' timing does not; 0
# without /usr/bin/time), and the high-water mark of the training device's
# arenas (metrics.jsonl's peak_arena_bytes: weights, gradients, AdamW, EMA and
# activations; on a GPU the figure to compare, where the process's memory is
# not and nvidia-smi shows the whole activation arena reserved).
# $launch (a launcher and its arguments, e.g. mpirun) and $diffc (default
# build/diffc) run it; further arguments go to diffc train.
bench_train_diffc() {
    local config=$1 batch=$2 data=$3 steps=$4 dir=build/bench-train timer=()
    shift 4
    rm -rf "$dir/out" "$dir/peak_kb"
    [[ -x /usr/bin/time ]] && timer=(/usr/bin/time -f %M -o "$dir/peak_kb")
    if ! OMP_NUM_THREADS=$threads "${timer[@]}" ${launch:-} "${diffc:-build/diffc}" train \
        --config "$config" --train-data-dir "$data" --cache-dir "$dir/cache" --output-dir "$dir/out" \
        --train-batch-size "$batch" --max-train-steps "$steps" --logging-steps 1 --sample-every 0 \
        --checkpointing-steps 0 "$@" >/dev/null 2>"$dir/log"; then
        cat "$dir/log" >&2
        return 1
    fi
    awk -v config="$config" -v batch="$batch" -v warmup="$warmup" -v peak_kb="$(tail -n 1 "$dir/peak_kb" 2>/dev/null || echo 0)" '
        match($0, /"images_per_s":[^,}]*/) && ++step > warmup {
            v = substr($0, RSTART + 15, RLENGTH - 15) + 0
            if (v > best) best = v
        }
        match($0, /"peak_arena_bytes":[^,}]*/) { p = substr($0, RSTART + 19, RLENGTH - 19) + 0; if (p > arena) arena = p }
        END { printf "bench train config=%s batch=%d images_per_s=%.3f peak_rss_mb=%.0f peak_arena_mb=%.0f\n",
                     config, batch, best, peak_kb / 1024, arena / 1048576 }
    ' "$dir/out/metrics.jsonl"
}

# Cases: config, batch, training data. cifar10-ddpm (35.7M parameters) runs at
# a small batch, on a CIFAR-10 batch file of random pixels. FLOPs per image
# come from the PyTorch side (hooks on the same model; see
# scripts/bench_train_torch.py): 3x the forward's conv, linear and attention
# products. The yardstick is OpenBLAS's sgemm on the same threads.
bench_train() {
    local dir=build/bench-train warmup=2
    local cases=("fashion-mnist 64 /usr/share/datasets/fashion-mnist" "cifar10-ddpm 8 $dir/cifar")
    if ! "$python" -c 'import diffusers' 2>/dev/null; then
        echo "train: $python cannot import diffusers; make the venv: python3 -m venv /tmp/dvenv &&" \
            "/tmp/dvenv/bin/pip install torch diffusers (or set DIFFUSERS_PYTHON)" >&2
        return 1
    fi
    [[ -x /usr/bin/time ]] || { echo "train: /usr/bin/time is missing: install the Debian package 'time'" >&2; return 1; }
    build_cpu diffc bench_sgemm
    mkdir -p "$dir"
    [[ -e $dir/cifar/data_batch_1.bin ]] ||
        python3 scripts/bench_train_torch.py make-cifar "$dir/cifar/data_batch_1.bin" --count 1000
    local c name batch data results
    for c in "${cases[@]}"; do # build the dataset caches outside the measured runs
        read -r name batch data <<<"$c"
        bench_train_diffc "configs/$name.json" 1 "$data" 1 >/dev/null
    done
    # Lines `diffc|pytorch bench train config=.. images_per_s=..`, `sgemm bench sgemm .. gflops=..`.
    results=$(for ((i = 0; i < runs; i++)); do
        OMP_NUM_THREADS=$threads build/bench_sgemm --reps "$reps" | sed 's/^/sgemm /'
        for c in "${cases[@]}"; do
            read -r name batch data <<<"$c"
            bench_train_diffc "configs/$name.json" "$batch" "$data" $((warmup + reps)) | sed 's/^/diffc /'
            OMP_NUM_THREADS=$threads "$python" scripts/bench_train_torch.py train --config "configs/$name.json" \
                --batch "$batch" --steps "$reps" --warmup "$warmup" --threads "$threads" | sed 's/^/pytorch /'
        done
    done)
    rm -rf "$dir/out"

    echo "== train: $machine, diffc kernels $(cpu_kernels), $threads threads; best of $reps steps (after $warmup) x $runs runs"
    echo "   a whole step each: diffc train beside diffusers' train_unconditional step (channels-last,"
    echo "   AdamW, EMA); GFLOP/s from 3x the forward's conv/linear/attention FLOPs, as a share of"
    echo "   OpenBLAS cblas_sgemm 2048x2048 on the same threads (its best run)"
    awk "$awk_field"'
        $1 == "sgemm" { if (field($0, "gflops") + 0 > sgemm) sgemm = field($0, "gflops") + 0; next }
        { keep_best(field($0, "config"), "images_per_s", 1) } # the fastest run
        END {
            printf "sgemm: %.1f GFLOP/s\n", sgemm
            printf "%-16s %5s %21s %19s %19s %17s\n", "", "", "images/s", "GFLOP/s", "% of sgemm", "peak MB"
            printf "%-16s %5s %7s %7s %5s %9s %9s %9s %9s %8s %8s\n", "config", "batch", "diffc", "torch",
                   "speed", "diffc", "torch", "diffc", "torch", "diffc", "torch"
            for (i = 1; i <= n; i++) {
                d = best["diffc " order[i]]; t = best["pytorch " order[i]]
                name = order[i]; sub(/^configs\//, "", name); sub(/\.json$/, "", name)
                if (t == "") { printf "%-16s (no PyTorch result)\n", name; continue }
                gflop = 3 * field(t, "fwd_gflop_per_image") # per training image
                di = field(d, "images_per_s"); ti = field(t, "images_per_s")
                printf "%-16s %5d %7.2f %7.2f %4.2fx %9.1f %9.1f %8.0f%% %8.0f%% %8d %8d\n", name,
                       field(d, "batch"), di, ti, di / ti, di * gflop, ti * gflop,
                       100 * di * gflop / sgemm, 100 * ti * gflop / sgemm,
                       field(d, "peak_rss_mb"), field(t, "peak_rss_mb")
            }
        }
    ' <<<"$results"
}

# ---- dist: what the gradient all-reduce costs, and how much the overlap hides ----

# On a GPU: configs/cifar10-ddpm.json (143 MB of gradient) at batch 32 in one
# process, three ways: without NCCL; through NCCL at world 1 (DC_NCCL=1) in
# one bucket, which can start only when the backward pass has ended; and in
# the default 25 MiB buckets, overlapped. World 1 measures the calls' cost
# (NCCL copies nothing between GPUs); cost = one bucket - plain, exposed =
# buckets - plain, hidden = 1 - exposed / cost. Without a GPU: two ranks
# (mpirun, half the threads each) on the CPU, configs/fashion-mnist.json at
# batch 16 per rank, one bucket against the default buckets.
bench_dist() {
    local dir=build/bench-train warmup=2 gpu=0 results
    mkdir -p "$dir"
    if nvidia-smi -L >/dev/null 2>&1 && { [[ -n ${BENCH_CUDA_BUILD:-} ]] || command -v nvcc >/dev/null; }; then
        gpu=1
        build_cuda diffc
        [[ -e $dir/cifar/data_batch_1.bin ]] ||
            python3 scripts/bench_train_torch.py make-cifar "$dir/cifar/data_batch_1.bin" --count 1000
        local run=(configs/cifar10-ddpm.json 32 "$dir/cifar" $((warmup + reps)) --device cuda)
        diffc=$cuda_build/diffc bench_train_diffc "${run[0]}" 1 "${run[2]}" 1 --device cuda >/dev/null
        results=$(for ((i = 0; i < runs; i++)); do
            diffc=$cuda_build/diffc bench_train_diffc "${run[@]}" | sed 's/^/plain /'
            DC_NCCL=1 DC_BUCKET_MB=100000 diffc=$cuda_build/diffc bench_train_diffc "${run[@]}" | sed 's/^/one /'
            DC_NCCL=1 diffc=$cuda_build/diffc bench_train_diffc "${run[@]}" | sed 's/^/buckets /'
        done)
        echo "== dist: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), world 1 through NCCL;" \
            "cifar10-ddpm batch 32, best of $reps steps x $runs runs"
    else
        command -v mpirun >/dev/null || { echo "== dist: skipped (no GPU, no mpirun)"; return; }
        build_cpu diffc
        local run=(configs/fashion-mnist.json 16 /usr/share/datasets/fashion-mnist $((warmup + reps)))
        bench_train_diffc "${run[0]}" 1 "${run[2]}" 1 >/dev/null
        local half=$(((threads + 1) / 2))
        local mpi="mpirun -np 2 --oversubscribe --allow-run-as-root --bind-to none -x OMP_NUM_THREADS=$half"
        results=$(for ((i = 0; i < runs; i++)); do
            launch="$mpi -x DC_BUCKET_MB=100000" bench_train_diffc "${run[@]}" | sed 's/^/one /'
            launch="$mpi -x DC_BUCKET_MB=0.5" bench_train_diffc "${run[@]}" | sed 's/^/buckets /'
        done)
        echo "== dist: $machine, 2 ranks x $half threads over MPI; fashion-mnist batch 16 per rank," \
            "0.5 MiB buckets; best of $reps steps x $runs runs"
    fi
    awk -v gpu="$gpu" "$awk_field"'
        {   ips = field($0, "images_per_s") + 0
            if (ips > best[$1]) { best[$1] = ips; batch[$1] = field($0, "batch") } }
        END {
            for (k in best) ms[k] = 1000 * batch[k] / best[k] * (gpu ? 1 : 2)
            if (gpu) {
                cost = ms["one"] - ms["plain"]; exposed = ms["buckets"] - ms["plain"]
                printf "step: %.2f ms without NCCL, %.2f ms in one bucket, %.2f ms in buckets\n",
                       ms["plain"], ms["one"], ms["buckets"]
                printf "all-reduce: %.2f ms a step, %.2f ms of it exposed: the overlap hides %.0f%%\n",
                       cost, exposed, cost > 0 ? 100 * (1 - exposed / cost) : 0
            } else
                printf "global step: %.1f ms in one bucket, %.1f ms in buckets (%.2fx)\n",
                       ms["one"], ms["buckets"], ms["one"] / ms["buckets"]
        }
    ' <<<"$results"
}

# ---- blip: captioning beside transformers ----

bench_blip() {
    build_cpu bench_blip
    local tpython=${TRANSFORMERS_PYTHON:-$python} batch=2 length=20 results beams
    # Lines `diffc|transformers bench blip config=C batch=N max_length=L num_beams=K ... images_per_s=I peak_mb=M`.
    results=$(for ((i = 0; i < runs; i++)); do
        for beams in 1 3; do
            OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads build/bench_blip --config configs/blip-base/config.json \
                --batch $batch --max-length $length --num-beams $beams --reps 2 | sed 's/^/diffc /'
            OMP_NUM_THREADS=$threads "$tpython" scripts/bench_blip_torch.py --config configs/blip-base/config.json \
                --batch $batch --max-length $length --num-beams $beams --reps 2 --threads "$threads" 2>/dev/null |
                sed 's/^/transformers /'
        done
    done)
    echo "== blip: $machine; $("$tpython" -c 'import transformers; print("transformers", transformers.__version__)' 2>/dev/null)"
    echo "   BLIP base, random weights, $threads threads, batch $batch, $length tokens (greedy, 3 beams); best of $runs runs"
    awk "$awk_field"'
        { keep_best(field($0, "num_beams"), "total_ms", -1) }
        END {
            printf "%-20s %10s %10s %10s %9s %8s\n", "", "vision ms", "decode ms", "images/s", "peak MB", "speed"
            for (i = 1; i <= n; i++) {
                d = best["diffc " order[i]]; t = best["transformers " order[i]]
                what = order[i] == 1 ? "greedy" : order[i] " beams"
                printf "%-20s %10s %10s %10s %9s %7.2fx\n", "diffc, " what, field(d, "vision_ms"),
                       field(d, "decode_ms"), field(d, "images_per_s"), field(d, "peak_mb"),
                       t == "" ? 0 : field(t, "total_ms") / field(d, "total_ms")
                if (t != "")
                    printf "%-20s %10s %10s %10s %9s\n", "transformers, " what, field(t, "vision_ms"),
                           field(t, "decode_ms"), field(t, "images_per_s"), field(t, "peak_mb")
            }
        }
    ' <<<"$results"
}

# ---- sd: text-to-image beside diffusers and stable-diffusion.cpp ----

# One `diffc sample --prompt` run: its summary's seconds per step as a bench line.
sd_diffc() {
    local model=$1 size=$2 steps=$3 dir=build/bench-sd timer=()
    rm -f "$dir/peak_kb"
    [[ -x /usr/bin/time ]] && timer=(/usr/bin/time -f %M -o "$dir/peak_kb")
    OMP_NUM_THREADS=$threads "${timer[@]}" build/diffc sample --model "$model" --height "$size" --width "$size" \
        --prompt "a photograph of an astronaut riding a horse" --num-inference-steps "$steps" \
        --weights-dtype "${SD_WEIGHTS_DTYPE:-f16}" --output-dir "$dir/out" >"$dir/summary"
    awk -v size="$size" -v steps="$steps" -v peak_kb="$(tail -n 1 "$dir/peak_kb" 2>/dev/null || echo 0)" '
        match($0, /[0-9.]+ s per step/) {
                printf "bench sd size=%dx%d steps=%d step_s=%s peak_mb=%.0f\n", size, size, steps,
                       substr($0, RSTART, RLENGTH - 11), peak_kb / 1024
            }' "$dir/summary"
}

bench_sd() {
    build_cpu diffc
    local dir=build/bench-sd sdcpp=${SDCPP_PYTHON:-$python} results
    local model=$dir/sd15
    if [[ ! -e $model/.done ]]; then
        rm -rf "$model"
        (cd scripts && "$python" make_sd_pipeline.py --out "../$model" >/dev/null) && touch "$model/.done"
    fi
    local has_sdcpp=1
    "$sdcpp" -c 'import stable_diffusion_cpp' 2>/dev/null || has_sdcpp=0
    # Lines `diffc|diffusers|sd.cpp bench sd size=HxW steps=S step_s=X ... peak_mb=M`.
    results=$(for ((i = 0; i < runs; i++)); do
        for size in 256 512; do
            local steps=$((size == 256 ? 6 : 4))
            sd_diffc "$model" $size $steps | sed 's/^/diffc /'
            OMP_NUM_THREADS=$threads "$python" scripts/bench_sd_torch.py --model "$model" --height $size \
                --width $size --steps $steps --threads "$threads" 2>/dev/null | sed 's/^/diffusers /'
            if [[ $has_sdcpp == 1 ]]; then
                OMP_NUM_THREADS=$threads "$sdcpp" scripts/bench_sd_cpp.py --model "$model" --height $size \
                    --width $size --steps $steps --threads "$threads" 2>/dev/null | sed 's/^/sd.cpp /'
            fi
        done
    done)
    echo "== sd: $machine; $("$sdcpp" -c 'import importlib.metadata as m; print("stable-diffusion-cpp-python", m.version("stable_diffusion_cpp_python"))' 2>/dev/null || echo "no stable-diffusion.cpp")"
    echo "   SD-1.5 architecture, random f32 weights, batch 1 with guidance 7.5, $threads threads; best of $runs runs"
    awk "$awk_field"'
        { keep_best(field($0, "size"), "step_s", -1) }
        END {
            printf "%-10s %14s %14s %14s %12s %12s %12s\n", "size", "diffc s/step", "diffusers", "sd.cpp",
                   "vs diffusers", "vs sd.cpp", "peak MB d/df/sc"
            for (i = 1; i <= n; i++) {
                d = best["diffc " order[i]]; t = best["diffusers " order[i]]; c = best["sd.cpp " order[i]]
                printf "%-10s %14s %14s %14s %11.2fx %11s %6s/%s/%s\n", order[i], field(d, "step_s"),
                       field(t, "step_s"), c == "" ? "-" : field(c, "step_s"),
                       t == "" ? 0 : field(t, "step_s") / field(d, "step_s"),
                       c == "" ? "-" : sprintf("%.2fx", field(c, "step_s") / field(d, "step_s")),
                       field(d, "peak_mb"), t == "" ? "-" : field(t, "peak_mb"), c == "" ? "-" : field(c, "peak_mb")
            }
        }
    ' <<<"$results"
}

# ---- sd-train: fine-tuning Stable Diffusion beside diffusers ----

# One `diffc train` run of 1 + $reps steps on two random images of `size` in `mode` (full,
# lora: --lora-rank 4, full-ckpt: --gradient-checkpointing): its best step after the first
# (metrics.jsonl's images_per_s) as a bench line.
sd_train_diffc() {
    local model=$1 size=$2 mode=$3 dir=build/bench-sd-train timer=() extra=()
    rm -rf "$dir/out" "$dir/peak_kb" && mkdir -p "$dir/data"
    "$python" -c 'import sys, numpy as np; from PIL import Image
s = int(sys.argv[2])
for k in range(2): Image.fromarray(np.random.default_rng(k).integers(0, 256, (s, s, 3), dtype=np.uint8)).save(f"{sys.argv[1]}/{k}.png")
open(sys.argv[1] + "/metadata.jsonl", "w").write("".join(f"{{\"file_name\": \"{k}.png\", \"text\": \"a photograph of an astronaut riding a horse\"}}\n" for k in range(2)))' \
        "$dir/data" "$size"
    case "$mode" in
    lora) extra=(--lora-rank 4) ;;
    full-ckpt) extra=(--gradient-checkpointing) ;;
    esac
    [[ -x /usr/bin/time ]] && timer=(/usr/bin/time -f %M -o "$dir/peak_kb")
    OMP_NUM_THREADS=$threads "${timer[@]}" build/diffc train --pretrained-model "$model" --train-data-dir "$dir/data" \
        --resolution "$size" --train-batch-size 1 --max-train-steps $((reps + 1)) --lr-warmup-steps 0 \
        --learning-rate 1e-5 --adam-beta1 0.9 --adam-weight-decay 1e-2 --sample-every 0 --checkpointing-steps 0 \
        --logging-steps 1 --device cpu --cache-dir "$dir" --output-dir "$dir/out" "${extra[@]}" >/dev/null 2>"$dir/log" ||
        { tail -n 3 "$dir/log" >&2; return 1; }
    awk -v size="$size" -v mode="$mode" -v peak_kb="$(tail -n 1 "$dir/peak_kb" 2>/dev/null || echo 0)" '
        NR > 1 && match($0, /"images_per_s": *[0-9.e+-]+/) {
            v = substr($0, RSTART, RLENGTH); sub(/.*: */, "", v); if (v > best) best = v }
        END { printf "bench sd-train case=%d-%s size=%dx%d batch=1 step_s=%.3f peak_mb=%.0f\n", size, mode, size,
                     size, 1 / best, peak_kb / 1024 }' "$dir/out/metrics.jsonl"
    rm -rf "$dir/out" # the final checkpoint: SD-1.5's weights and AdamW's moments, 14 GB
}

bench_sd-train() {
    build_cpu diffc
    local model=${SD_TRAIN_MODEL:-build/bench-sd/sd15} results size mode
    if [[ ! -e $model/model_index.json ]]; then
        rm -rf "$model"
        (cd scripts && "$python" make_sd_pipeline.py --out "../$model" >/dev/null) && touch "$model/.done"
    fi
    # Lines `diffc|diffusers bench sd-train case=SIZE-MODE size=HxW batch=1 step_s=X peak_mb=M`.
    results=$(for ((i = 0; i < runs; i++)); do
        for c in ${SD_TRAIN_CASES:-256-full 256-lora 512-lora 512-full-ckpt}; do
            size=${c%%-*} mode=${c#*-}
            sd_train_diffc "$model" "$size" "$mode" | sed 's/^/diffc /'
            OMP_NUM_THREADS=$threads "$python" scripts/bench_sd_train_torch.py --model "$model" --size "$size" \
                --mode "$mode" --steps "$reps" --threads "$threads" 2>/dev/null | sed 's/^/diffusers /'
        done
    done)
    echo "== sd-train: $machine"
    echo "   fine-tuning $model's UNet (full; lora: rank 4 on to_q/k/v/out.0; full-ckpt: with gradient"
    echo "   checkpointing), batch 1, f32, $threads threads; best step of $reps, best of $runs runs"
    awk "$awk_field"'
        { keep_best(field($0, "case"), "step_s", -1) }
        END {
            printf "%-14s %14s %14s %12s %16s\n", "case", "diffc s/step", "diffusers", "vs diffusers",
                   "peak MB d/df"
            for (i = 1; i <= n; i++) {
                d = best["diffc " order[i]]; t = best["diffusers " order[i]]
                printf "%-14s %14s %14s %11.2fx %9s/%s\n", order[i], field(d, "step_s"),
                       t == "" ? "-" : field(t, "step_s"), t == "" ? 0 : field(t, "step_s") / field(d, "step_s"),
                       field(d, "peak_mb"), t == "" ? "-" : field(t, "peak_mb")
            }
        }
    ' <<<"$results"
}

# ---- ckpt: gradient checkpointing's memory and time ----

bench_ckpt() {
    build_cpu bench_checkpoint
    local sd=configs/sd15-unet/config.json avail_kb sd512=(--only checkpointed) results
    avail_kb=$(awk '/^MemAvailable:/ { print $2 }' /proc/meminfo)
    [[ ${avail_kb:-0} -gt 16000000 ]] && sd512=()
    # Lines `bench checkpoint config=C model=M size=HxW batch=N ... plain_ms=.. ckpt_ms=.. plain_held_mb=..`,
    # OpenMP waiting as diffc's own processes do
    results=$(
        export OMP_NUM_THREADS=$threads OMP_WAIT_POLICY=passive GOMP_SPINCOUNT=10000
        build/bench_checkpoint --config configs/fashion-mnist.json --batch 64 --reps "$reps"
        build/bench_checkpoint --config configs/cifar10-ddpm.json --batch 8 --reps "$reps"
        build/bench_checkpoint --config $sd --size 32 --frozen --warmup 0
        build/bench_checkpoint --config $sd --size 64 --frozen --warmup 0 "${sd512[@]}"
    )
    echo "== ckpt: $machine, diffc kernels $(cpu_kernels), $threads threads; a training step's activations"
    echo "   held at once per image (what diffc train's memory check counts) and step time, without / with"
    echo "   --gradient-checkpointing (wall time; the overhead from the CPU time of all threads, steadier on a"
    echo "   shared machine); SD-1.5: latents of 256x256 and 512x512, frozen random weights, one step each"
    awk "$awk_field"'
        BEGIN {
            printf "%-32s %6s %5s %12s %11s %6s %9s %9s %8s\n", "model", "size", "batch", "plain MB/img",
                   "ckpt MB/img", "ratio", "plain ms", "ckpt ms", "overhead"
        }
        {
            b = field($0, "batch"); p = field($0, "plain_held_mb") / b; c = field($0, "ckpt_held_mb") / b
            pm = field($0, "plain_ms") + 0; cm = field($0, "ckpt_ms") + 0
            printf "%-32s %6s %5s %12s %11.1f %6s %9s %9.0f %8s\n", field($0, "config"), field($0, "size"), b,
                   (p > 0 ? sprintf("%.1f", p) : "-"), c, (p > 0 ? sprintf("%.2f", c / p) : "-"),
                   (pm > 0 ? sprintf("%.0f", pm) : "-"), cm, (pm > 0 ? sprintf("%+.0f%%", field($0, "overhead_pct")) : "-")
        }
    ' <<<"$results"
}

# ---- cuda-ops: the GPU kernels beside PyTorch's ----

bench_cuda-ops() {
    if ! command -v nvcc >/dev/null && [[ ! -x /usr/local/cuda/bin/nvcc ]]; then
        echo "== cuda-ops: skipped (no nvcc)"
        return
    fi
    build_cuda bench_cuda_ops
    local results rc=0
    results=$("$cuda_build/bench_cuda_ops" --reps "$reps" | sed 's/^/diffc /') || rc=$?
    if [[ $rc -eq 77 ]]; then
        echo "== cuda-ops: skipped (no GPU)"
        return
    fi
    [[ $rc -eq 0 ]] || return $rc
    results+=$'\n'$("${TORCH_PYTHON:-/usr/bin/python3}" scripts/bench_torch_cuda_ops.py --reps "$reps" | sed 's/^/pytorch /')
    echo "== cuda-ops: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); best of $reps; times in ms"
    cuda_ops_table <<<"$results"
}

for section in "${sections[@]}"; do
    "bench_$section"
done
