#!/usr/bin/env bash
# The CUDA backend's first checks on a GPU machine, in stages that each fit in
# one 600 s command of the device tool (/work/.library/device/README.md):
#   build     configure build-gpu (RelWithDebInfo, CUDA arch 90, -lineinfo, native
#             CPU code: it is built where it runs) and build it on every core; print
#             the GPU, driver, OS, compilers, CMake, cuDNN and NCCL it found
#   tests     ctest -R cuda (the GPU tests; exit 77 is a skip), then the CPU suite
#   sanitize  compute-sanitizer memcheck, racecheck, initcheck on test_cuda_ops, with
#             CK_FORK=no; each tool under a time limit (incomplete, not failed, when
#             it runs out)
#   bench     the GPU ops beside PyTorch, TF32 and bf16 (the cases and programs of
#             scripts/bench.sh cuda-ops, run directly: bench.sh calls /usr/bin/python3,
#             not the python3 that holds torch there, and builds build-cuda for 80 and 90)
#   train     `diffc train --device cuda` on configs/cifar10-ddpm.json (35.7M
#             parameters, 32x32) at batch 128, TF32 and bf16, beside diffusers'
#             training step in PyTorch on the same GPU (channels_last, TF32 and bf16
#             autocast, fused AdamW, EMA): images/s, TFLOP/s, peak GPU memory
#   dist      scripts/bench.sh dist on build-gpu: the gradient all-reduce's cost
#             per step through NCCL at world 1, and the share the overlap hides
#   fetch     here, not there: download what the GPU machine lacks into .gpu-carry/
#
#   scripts/gpu_check.sh [fetch] [build] [tests] [sanitize] [bench] [train] [dist]
#   (default: build tests sanitize bench train)
#
# Logs: $OUT/<stage>.log and $OUT/summary.txt ($OUT is the folder the device
# tool brings back, at most 8 files: keep to 7 stages a call; ./gpu-out when
# unset). Stdout keeps one line per stage, the test counts and the tables. A
# stage that fails does not stop the next; the exit status is 1 when one
# failed. Without a GPU the GPU stages say so and are skipped (exit 0).
# Knobs (environment): GPU_CHECK_JOBS (nproc), GPU_CHECK_TESTS_SECONDS (420: the
# tests stage's limit), GPU_CHECK_SANITIZE ("memcheck:210 racecheck:150
# initcheck:90", tool:seconds), GPU_CHECK_SANITIZE_TESTS (test_cuda_ops; also
# test_cuda_train), GPU_CHECK_SANITIZE_ARGS (more compute-sanitizer options, e.g.
# a kernel filter), GPU_CHECK_BENCH_REPS (20), GPU_CHECK_TRAIN_STEPS (25 timed,
# after 5; dist's too), GPU_CHECK_TRAIN_BATCH (128), GPU_CHECK_TRAIN_SECONDS (330: the
# train stage's limit, shared among its four runs), GPU_CHECK_DIST_SECONDS (240),
# GPU_CHECK_PYTHON (python3: the one with
# torch), GPU_CHECK_BUILD_DIR (build-gpu), GPU_CHECK_CARRIED_DEPS=1 (build with
# the carried .debs alone, even where the machine has the libraries: their test).
#
# What the GPU machine has (KINDS.md beside the device README, 2026-11; the build
# stage prints what it finds): the image 'cuda' with nvcc 13.0, CMake, ninja,
# compute-sanitizer, python3 = /opt/torch/.venv (torch 2.11+cu130, with cuDNN and
# NCCL as the wheels nvidia-cudnn-cu13 and nvidia-nccl-cu13; no diffusers), root,
# nothing reachable outside. Not known to be there: pkg-config, OpenBLAS, cJSON,
# libpng, libjpeg, zlib's headers, Check, MPI. So `scripts/gpu_check.sh fetch`
# (here, on Debian 12) puts Debian 12's .debs of those (and of pkgconf and Open
# MPI's libraries: MPI is what turns NCCL on, and test_cuda_cli's NCCL test fails
# without it) and the diffusers wheel into .gpu-carry/ (about 26 MB; ignored by
# git, so each call names it in carry). There, when pkg-config or a library is
# missing, the build unpacks the .debs into /tmp/diffc-deps (dpkg -x; never into
# /), rewrites their pkg-config files to that prefix and points CMake at it; our
# programs run with its libraries on LD_LIBRARY_PATH, Python without them. cuDNN
# and NCCL come from the CUDA toolkit or, failing that, from the Python wheels'
# folders. The train stage installs the diffusers wheel with pip --no-index into
# /tmp/diffc-site when python3 cannot import diffusers.
#
# The plan for a session with 30 minutes of device time (a fresh machine takes
# 1-2 minutes to start; a warm one keeps build-gpu between calls but goes back
# 30 s after a call ends, so make the calls back to back, read the logs after,
# and give it back last; each call starts with `build`, a few seconds when warm,
# 1-2 minutes on a fresh machine):
#   here:   the script must be in the checkout the session runs from (the device
#           tool sends that checkout, not a helper's worktree); in it run
#           scripts/gpu_check.sh fetch    (.gpu-carry/: 23 .debs + 1 wheel, 25 MB)
#   call 1: run(command="bash scripts/gpu_check.sh build tests", carry=[".gpu-carry"], timeout_s=600)
#           ~1-2 min build, ~1-6 min tests (stops itself at 7). A failed build
#           says why (build.log): fix it here, then the same call again.
#   call 2: run(command="bash scripts/gpu_check.sh build sanitize", carry=[".gpu-carry"], timeout_s=600)
#           sanitize stops itself within 7.5 min (GPU_CHECK_SANITIZE). If call 1
#           showed failing GPU tests, sanitize the failing binary first, e.g.
#           command="GPU_CHECK_SANITIZE=memcheck:400 GPU_CHECK_SANITIZE_TESTS=test_cuda_train
#           bash scripts/gpu_check.sh build sanitize".
#   call 3: run(command="bash scripts/gpu_check.sh build bench train", carry=[".gpu-carry"], timeout_s=600)
#           bench ~1-2 min, train at most 5.5 min (GPU_CHECK_TRAIN_SECONDS).
#   call 4: run(command="bash scripts/gpu_check.sh build dist", carry=[".gpu-carry"], timeout_s=300)
#           three short cifar10-ddpm runs at batch 32, at most 4 min.
#   then:   give_back. Each reply has the stage lines and tables at the end of its
#           output_tail, and $OUT's logs under files_at.
# About 25 of the 30 minutes when all goes to plan.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
source scripts/bench_lib.sh # awk_field, cuda_ops_table
out=${OUT:-$root/gpu-out}
carry=$root/.gpu-carry
build=$root/${GPU_CHECK_BUILD_DIR:-build-gpu}
deps=/tmp/diffc-deps
site=/tmp/diffc-site
ma=x86_64-linux-gnu
jobs=${GPU_CHECK_JOBS:-$(nproc)}
python=${GPU_CHECK_PYTHON:-python3}

# The .debs of `fetch`: Debian 12's build and run-time packages of what
# CMakeLists.txt needs beyond a compiler and CUDA (scripts/setup.sh's list),
# with the libraries they pull in; and the wheels.
debs=(pkgconf-bin libpkgconf3
      libopenblas0-openmp libopenblas-openmp-dev libgfortran5 libquadmath0
      libcjson1 libcjson-dev libpng16-16 libpng-dev libjpeg62-turbo libjpeg62-turbo-dev
      zlib1g zlib1g-dev check libsubunit0 libsubunit-dev
      libopenmpi3 libopenmpi-dev libhwloc15 libevent-core-2.1-7 libevent-pthreads-2.1-7 libudev1)
wheels=(diffusers==0.42.1) # needs huggingface-hub>=1.32 and safetensors>=0.8: the machine has 1.33, 0.8
modules=(openblas libcjson libpng libjpeg zlib check)

usage() { echo "usage: $0 [fetch] [build] [tests] [sanitize] [bench] [train] [dist]" >&2; }

stages=()
for arg in "$@"; do
    case "$arg" in
    fetch | build | tests | sanitize | bench | train | dist) stages+=("$arg") ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) usage; exit 2 ;;
    esac
done
[[ ${#stages[@]} -gt 0 ]] || stages=(build tests sanitize bench train)
mkdir -p "$out"

# ---- helpers ----

log=/dev/null # the running stage's log
say() { echo "$*" | tee -a "$log"; }
# A command's output to the log only; its status is the command's.
quiet() { "$@" >>"$log" 2>&1; }
# The last lines of the log on stdout (after a failure).
show_tail() { tail -n "${1:-25}" "$log" | sed 's/^/   | /'; }
# The device tool brings back files of at most 16 MiB: a longer log keeps its
# first 2 MiB and its last 12.
trim_log() {
    [[ $(stat -c %s "$log") -le $((15 << 20)) ]] && return 0
    { head -c $((2 << 20)) "$log"; printf '\n[... cut ...]\n'; tail -c $((12 << 20)) "$log"; } >"$log.cut"
    mv "$log.cut" "$log"
}

have_gpu() {
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi -L 2>/dev/null | grep -q '^GPU '
    else
        command -v __nvcc_device_query >/dev/null && __nvcc_device_query >/dev/null 2>&1
    fi
}

# Our programs run with the carried libraries (and the wheels' cuDNN/NCCL) on
# the library path; nothing else does, so Python keeps its own.
ld_extra=""
ours() {
    local p=$ld_extra${LD_LIBRARY_PATH:+${ld_extra:+:}$LD_LIBRARY_PATH}
    LD_LIBRARY_PATH=$p "$@"
}

# ---- the environment: CUDA on the PATH, a recent CMake, the dependencies ----

env_notes=() cmake_args=()
cmake=cmake ctest=ctest

# cmake >= 3.24 (CMakeLists.txt), from the PATH or beside python3 (pip's cmake).
find_cmake() {
    local c v dir
    dir=$("$python" -c 'import os, sys; print(os.path.dirname(sys.executable))' 2>/dev/null || true)
    for c in "$(command -v cmake || true)" ${dir:+"$dir/cmake"}; do
        [[ -n $c && -x $c ]] || continue
        v=$("$c" --version | sed -n 's/^cmake version \([0-9]*\.[0-9]*\).*/\1/p')
        if [[ -n $v ]] && printf '3.24\n%s\n' "$v" | sort -C -V; then
            cmake=$c ctest=$(dirname "$c")/ctest
            return 0
        fi
    done
    env_notes+=("no CMake >= 3.24 found (PATH, $dir)")
    return 1
}

# Everything CMake's pkg_check_modules and FindMPI need that is not here.
missing_deps() {
    local m
    if ! command -v pkg-config >/dev/null; then
        echo pkg-config "${modules[@]}"
    else
        for m in "${modules[@]}"; do pkg-config --exists "$m" || echo "$m"; done
    fi
    command -v mpicc >/dev/null || echo mpi
}

# Unpack the carried .debs into $deps (once per machine), the way dpkg -x
# does; pkg-config files and absolute links are made to point inside it.
unpack_debs() {
    [[ -e $deps/.done ]] && return 0
    compgen -G "$carry/debs/*.deb" >/dev/null || return 1
    rm -rf "$deps"
    mkdir -p "$deps"
    local f l t
    for f in "$carry"/debs/*.deb; do
        if command -v dpkg-deb >/dev/null; then
            dpkg-deb -x "$f" "$deps" || return 1
        else # a .deb is an ar archive holding data.tar.*
            ar p "$f" "$(ar t "$f" | grep '^data\.tar')" >"$deps/data.tar" && tar -xf "$deps/data.tar" -C "$deps" &&
                rm "$deps/data.tar" || return 1
        fi
    done
    find "$deps" -name '*.pc' -exec sed -i "s|=/usr|=$deps/usr|g; s|-I/usr|-I$deps/usr|g; s|-L/usr|-L$deps/usr|g" {} +
    while read -r l; do
        t=$(readlink "$l")
        [[ -e $deps$t ]] && ln -sfn "$deps$t" "$l"
    done < <(find "$deps" -type l -lname '/*')
    # pkgconf, wrapped so that only it sees its library
    mkdir -p "$deps/bin"
    printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$deps/usr/lib/$ma" "$deps/usr/bin/pkgconf" >"$deps/bin/pkg-config"
    chmod +x "$deps/bin/pkg-config"
    touch "$deps/.done"
}

# cuDNN or NCCL: nothing to do when the toolkit or the system has the header
# and the unversioned library (CMake finds them); else the Python wheel's
# folders (nvidia/cudnn, nvidia/nccl), passed to CMake as DC_<NAME>_INCLUDE
# and DC_<NAME>_LIB. Sets found_dir to the header's folder ("" when none).
find_cuda_lib() {
    local name=$1 header=$2 var=$3 d h l cuda
    found_dir=""
    cuda=$(dirname "$(dirname "$(command -v nvcc)")")
    for d in "$cuda/include" "$cuda/targets/x86_64-linux/include" /usr/include /usr/include/$ma /usr/local/include; do
        [[ -e $d/$header ]] || continue
        for l in "$cuda/lib64" "$cuda/lib" "$cuda/targets/x86_64-linux/lib" /usr/lib/$ma /usr/local/lib; do
            [[ -e $l/lib$name.so ]] && { found_dir=$d; return 0; }
        done
    done
    for d in $("$python" -c 'import nvidia; print(" ".join(nvidia.__path__))' 2>/dev/null); do
        h=$(find "$d" -maxdepth 4 -name "$header" -print -quit)
        [[ -n $h ]] || continue
        l=$(find "${h%/include/*}" -maxdepth 3 -name "lib$name.so*" | sort | head -1)
        [[ -n $l ]] || continue
        found_dir=$(dirname "$h")
        cmake_args+=("-D${var}_INCLUDE=$found_dir" "-D${var}_LIB=$l")
        ld_extra+=${ld_extra:+:}$(dirname "$l")
        env_notes+=("$name from the Python wheel: $l")
        return 0
    done
    env_notes+=("$header not found (CUDA toolkit, system, Python wheels)")
    return 1
}

setup_env() {
    if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
        export PATH=/usr/local/cuda/bin:$PATH
    fi
    find_cmake || true
    local missing pc=$deps/usr/lib/$ma/openblas-openmp/pkgconfig:$deps/usr/lib/$ma/pkgconfig:$deps/usr/share/pkgconfig
    missing=$(missing_deps | xargs)
    [[ ${GPU_CHECK_CARRIED_DEPS:-0} == 1 ]] && missing="pkg-config ${modules[*]} mpi (forced)"
    if [[ -n $missing ]]; then
        if unpack_debs; then
            env_notes+=("missing here: $missing; using the carried .debs unpacked in $deps")
            if [[ $missing == *forced* ]]; then # the carried packages alone
                export PKG_CONFIG_LIBDIR=$pc
                cmake_args+=("-DPKG_CONFIG_EXECUTABLE=$deps/bin/pkg-config")
            elif [[ $missing != mpi ]]; then
                export PKG_CONFIG_PATH=$pc${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
                command -v pkg-config >/dev/null || cmake_args+=("-DPKG_CONFIG_EXECUTABLE=$deps/bin/pkg-config")
            fi
            if [[ $missing == *mpi* ]]; then
                cmake_args+=(-DMPI_SKIP_COMPILER_WRAPPER=ON "-DMPI_C_HEADER_DIR=$deps/usr/lib/$ma/openmpi/include"
                             -DMPI_C_LIB_NAMES=mpi "-DMPI_mpi_LIBRARY=$deps/usr/lib/$ma/openmpi/lib/libmpi.so")
            fi
            # the linker follows libopenblas to libgfortran, libmpi to libhwloc ... here
            local dirs=$deps/usr/lib/$ma/openblas-openmp:$deps/usr/lib/$ma:$deps/lib/$ma
            cmake_args+=("-DCMAKE_EXE_LINKER_FLAGS=-Wl,-rpath-link,$dirs")
            ld_extra+=${ld_extra:+:}$deps/usr/lib/$ma/openblas-openmp:$deps/usr/lib/$ma
        else
            env_notes+=("missing here: $missing, and no .debs in $carry/debs: run 'scripts/gpu_check.sh fetch' where apt works and carry .gpu-carry")
        fi
    fi
    cudnn_dir="" nccl_dir=""
    if command -v nvcc >/dev/null; then
        find_cuda_lib cudnn cudnn_version.h DC_CUDNN || true
        cudnn_dir=$found_dir
        find_cuda_lib nccl nccl.h DC_NCCL || true
        nccl_dir=$found_dir
    fi
}

version_of() { # header-dir header PREFIX: "M.m.p" from the #defines
    [[ -n $1 && -e $1/$2 ]] || { echo "not found"; return; }
    awk -v p="$3" '$1 == "#define" && $2 == p "_MAJOR" { M = $3 } $1 == "#define" && $2 == p "_MINOR" { m = $3 }
        $1 == "#define" && ($2 == p "_PATCHLEVEL" || $2 == p "_PATCH") { q = $3 }
        END { print M "." m "." q }' "$1/$2"
}

# ---- fetch (here) ----

stage_fetch() {
    mkdir -p "$carry/debs" "$carry/wheels"
    rm -f "$carry"/debs/*.deb "$carry"/wheels/*.whl
    say "-- Debian packages into $carry/debs ($(. /etc/os-release && echo "$PRETTY_NAME"))"
    # apt's sandbox user cannot write here as root: download in a temporary folder it owns
    local tmp
    tmp=$(mktemp -d)
    chmod 777 "$tmp"
    if ! (cd "$tmp" && quiet apt-get download "${debs[@]}"); then
        note="apt-get download failed (see fetch.log)"
        rm -rf "$tmp"
        return 1
    fi
    mv "$tmp"/*.deb "$carry/debs/"
    rm -rf "$tmp"
    say "-- wheels into $carry/wheels"
    if ! quiet "$python" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$carry/wheels" "${wheels[@]}"; then
        note="pip download failed (see fetch.log)"
        return 1
    fi
    local total
    total=$(du -sh "$carry" | cut -f1)
    say "$(ls "$carry/debs" | wc -l) .debs, $(ls "$carry/wheels" | wc -l) wheel(s): $total in $carry"
    note="$total in .gpu-carry: name it in carry"
}

# ---- build ----

stage_build() {
    say "-- machine"
    say "host: $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME"), $(nproc) cores, $(ldd --version 2>/dev/null | head -1)"
    if command -v nvidia-smi >/dev/null; then
        say "$(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,persistence_mode \
            --format=csv 2>&1)"
        quiet nvidia-smi || true
    else
        say "nvidia-smi: not found"
    fi
    local nvcc_v
    nvcc_v=$(nvcc --version 2>/dev/null | tail -2 | head -1 || true)
    say "nvcc: ${nvcc_v:-not found}"
    say "gcc: $(gcc --version 2>/dev/null | head -1)"
    say "cmake: $cmake ($("$cmake" --version 2>/dev/null | head -1))"
    say "cuDNN: $(version_of "${cudnn_dir:-}" cudnn_version.h CUDNN) (${cudnn_dir:-?}); NCCL: $(version_of "${nccl_dir:-}" nccl.h NCCL) (${nccl_dir:-?})"
    say "python: $python ($("$python" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tail -1))"
    local n
    for n in "${env_notes[@]}"; do say "note: $n"; done
    [[ -n $nvcc_v ]] || { note="no nvcc"; return 1; }

    say "-- configure $build (CUDA arch 90, RelWithDebInfo, -lineinfo, native CPU code)"
    local gen=()
    [[ ! -e $build/CMakeCache.txt ]] && command -v ninja >/dev/null && gen=(-G Ninja)
    if ! quiet "$cmake" -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_CUDA_FLAGS=-lineinfo -DDC_NATIVE=ON "${cmake_args[@]}"; then
        note="cmake failed"
        show_tail
        return 1
    fi
    grep -E '^-- (diffc:|Found CUDAToolkit)' "$log" | tail -n 8 | sed 's/^-- /   /'
    if ! grep -q 'diffc: CUDA backend ON' "$log"; then
        note="configured without the CUDA backend"
        return 1
    fi
    say "-- build with $jobs jobs"
    local t0=$SECONDS
    if ! quiet timeout -k 10 540 "$cmake" --build "$build" -j"$jobs"; then
        note="build failed"
        grep -E 'error|Error' "$log" | head -n 20 | sed 's/^/   | /'
        return 1
    fi
    local mpi nccl
    mpi=$(grep -q 'diffc: MPI ON' "$log" && echo on || echo off)
    nccl=$(grep -q 'diffc: NCCL ON' "$log" && echo on || echo off)
    note="CUDA on, MPI $mpi, NCCL $nccl; built in $((SECONDS - t0)) s with $jobs jobs"
    [[ $nccl == on ]] || say "note: NCCL off: test_cuda_cli's NCCL test fails without it (it does not skip)"
}

# ---- tests ----

# "P passed, F failed, S skipped" from ctest's output in $1.
ctest_counts() {
    local total failed skipped
    total=$(sed -n 's/.*tests failed out of \([0-9]*\).*/\1/p' "$1" | tail -1)
    failed=$(sed -n 's/.* \([0-9]*\) tests failed out of.*/\1/p' "$1" | tail -1)
    skipped=$(grep -c '(Skipped)' "$1" || true)
    [[ -n $total ]] || { echo "no result"; return; }
    echo "$((total - failed - skipped)) passed, $failed failed, $skipped skipped"
}

stage_tests() {
    [[ -x $build/test_cuda_ops ]] || { note="no $build/test_cuda_ops: run the build stage first"; return 1; }
    local limit=${GPU_CHECK_TESTS_SECONDS:-420} t0=$SECONDS rc=0 rc2=0 tmp gpu cpu
    tmp=$(mktemp)
    say "-- GPU tests: ctest -R cuda (at most $((limit * 3 / 4)) s)"
    ours timeout -k 10 $((limit * 3 / 4)) "$ctest" --test-dir "$build" -R cuda -j3 --timeout $((limit * 3 / 4 - 10)) \
        --output-on-failure >"$tmp" 2>&1 || rc=$?
    cat "$tmp" >>"$log"
    gpu=$(ctest_counts "$tmp")
    grep -E 'Test +#|tests passed|\(Skipped\)|\(Failed\)|\(Timeout\)' "$tmp" | sed 's/^/   /'
    # Check's lines for failed assertions and errors: file:line:F|E:case:test:...
    grep -E '^[^ ]+:[0-9]+:[EF]:' "$tmp" | head -n 30 | sed 's/^/   | /' || true
    [[ $rc -eq 124 || $rc -eq 137 ]] && say "   (stopped at the time limit)"
    local left=$((limit - (SECONDS - t0)))
    if [[ $left -gt 30 ]]; then
        say "-- CPU tests: ctest -E cuda -j$jobs (at most $left s)"
        ours timeout -k 10 "$left" "$ctest" --test-dir "$build" -E cuda -j"$jobs" --timeout 300 \
            --output-on-failure >"$tmp" 2>&1 || rc2=$?
        cat "$tmp" >>"$log"
        cpu=$(ctest_counts "$tmp")
        grep -E 'tests passed|\(Skipped\)|\(Failed\)|\(Timeout\)|\*\*\*' "$tmp" | sed 's/^/   /'
        grep -E '^[^ ]+:[0-9]+:[EF]:' "$tmp" | head -n 20 | sed 's/^/   | /' || true
    else
        cpu="not run (no time left)"
        rc2=1
    fi
    rm -f "$tmp"
    note="GPU: $gpu; CPU: $cpu"
    if [[ $gpu == "0 passed, 0 failed, 3 skipped" ]] && ! have_gpu; then
        note+=" (no GPU here)"
    fi
    [[ $rc -eq 0 && $rc2 -eq 0 ]]
}

# ---- sanitize ----

find_sanitizer() {
    local c
    for c in "$(command -v compute-sanitizer || true)" "$(dirname "$(command -v nvcc)")/compute-sanitizer" \
        /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
        [[ -n $c && -x $c ]] && { echo "$c"; return 0; }
    done
    return 1
}

stage_sanitize() {
    have_gpu || { note="no GPU: skipped"; return 77; }
    local cs
    cs=$(find_sanitizer) || { note="compute-sanitizer not found"; return 1; }
    say "$("$cs" --version | tail -1)"
    local spec tool secs t rc tmp fails=() clean=() cut=() extra opts
    read -r -a extra <<<"${GPU_CHECK_SANITIZE_ARGS:-}"
    tmp=$(mktemp)
    for spec in ${GPU_CHECK_SANITIZE:-memcheck:210 racecheck:150 initcheck:90}; do
        tool=${spec%%:*} secs=${spec#*:}
        for t in ${GPU_CHECK_SANITIZE_TESTS:-test_cuda_ops}; do
            [[ -x $build/$t ]] || { fails+=("$tool/$t (not built)"); continue; }
            say "-- $tool: $t (CK_FORK=no, at most $secs s)"
            # API calls that return an error are not reported: the error-path tests (out of
            # memory, the sticky error's memset of a host address, bad device ordinals) make
            # them on purpose and check that diffc reports them
            opts=(--tool "$tool" --error-exitcode 86 --print-limit 25 --report-api-errors no)
            [[ $tool == memcheck ]] && opts+=(--check-api-memory-access no)
            rc=0
            CK_FORK=no ours timeout -k 10 "$secs" "$cs" "${opts[@]}" "${extra[@]}" "$build/$t" >"$tmp" 2>&1 || rc=$?
            cat "$tmp" >>"$log"
            grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|Checks:' "$tmp" | sed 's/^/   /' || true
            # the kernels the reports are in, most reported first
            grep -oE '^=+ +at [^ (]+' "$tmp" | awk '{print $NF}' | sort | uniq -c | sort -rn | head -n 8 |
                sed 's/^/   in kernel: /' || true
            if grep -q 'Device not supported' "$tmp"; then # e.g. a gVisor machine (KINDS.md)
                note="compute-sanitizer does not support this machine's GPU: skipped"
                rm -f "$tmp"
                return 77
            fi
            case $rc in
            0) clean+=("$tool/$t") ;;
            124 | 137) cut+=("$tool/$t") ; say "   stopped at $secs s: incomplete" ;;
            86) fails+=("$tool/$t") ;;
            *) fails+=("$tool/$t (exit $rc)"); tail -n 15 "$tmp" | sed 's/^/   | /' ;;
            esac
        done
    done
    rm -f "$tmp"
    note="clean: ${clean[*]:-none}"
    [[ ${#cut[@]} -eq 0 ]] || note+="; incomplete (time limit): ${cut[*]}"
    [[ ${#fails[@]} -eq 0 ]] || { note+="; FOUND: ${fails[*]}"; return 1; }
}

# ---- bench ----

stage_bench() {
    have_gpu || { note="no GPU: skipped"; return 77; }
    [[ -x $build/bench_cuda_ops ]] || { note="no $build/bench_cuda_ops: run the build stage first"; return 1; }
    local reps=${GPU_CHECK_BENCH_REPS:-20} ours_out torch_out rc=0
    say "-- build-gpu/bench_cuda_ops --reps $reps"
    ours_out=$(ours timeout -k 10 200 "$build/bench_cuda_ops" --reps "$reps" 2>>"$log") || rc=$?
    echo "$ours_out" | sed 's/^/diffc /' >>"$log"
    [[ $rc -eq 0 ]] || { note="bench_cuda_ops failed (exit $rc)"; show_tail 15; return 1; }
    say "-- scripts/bench_torch_cuda_ops.py --reps $reps"
    torch_out=$(timeout -k 10 200 "$python" scripts/bench_torch_cuda_ops.py --reps "$reps" 2>>"$log") || rc=$?
    echo "$torch_out" | sed 's/^/pytorch /' >>"$log"
    [[ $rc -eq 0 ]] || say "PyTorch side failed (exit $rc): diffc's times alone"
    say "== cuda-ops: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); best of $reps; times in ms;"
    say "   speed = PyTorch's total / diffc's (> 1: diffc faster)"
    { sed 's/^/diffc /' <<<"$ours_out"; if [[ -n $torch_out ]]; then sed 's/^/pytorch /' <<<"$torch_out"; fi; } |
        cuda_ops_table | tee -a "$log"
    note="$(grep -c . <<<"$ours_out") cases$([[ $rc -eq 0 ]] || echo ", no PyTorch side")"
}

# ---- train ----

# One `diffc train` run on the GPU: prints `bench train impl=diffc math=.. images_per_s=<best>
# median_images_per_s=.. peak_gpu_mb=..` (steps after the warm-up, from metrics.jsonl; the
# peak is the arenas' own high-water mark, metrics.jsonl's peak_arena_bytes: nvidia-smi would
# show the activation arena, which reserves most of the GPU up front).
train_diffc() {
    local math=$1 batch=$2 steps=$3 warmup=$4 secs=$5 dir=$build/bench-train rc=0
    rm -rf "$dir/out"
    ours timeout -k 10 "$secs" "$build/diffc" train --config configs/cifar10-ddpm.json --train-data-dir "$dir/cifar" \
        --cache-dir "$dir/cache" --output-dir "$dir/out" --train-batch-size "$batch" \
        --max-train-steps $((warmup + steps)) --logging-steps 1 --sample-every 0 --checkpointing-steps 0 \
        --device cuda --mixed-precision "$math" >>"$log" 2>&1 || rc=$?
    [[ $rc -eq 0 ]] || { echo "diffc train --mixed-precision $math failed (exit $rc)" >&2; return 1; }
    awk -v math="$math" -v batch="$batch" -v warmup="$warmup" '
        match($0, /"images_per_s":[^,}]*/) && ++step > warmup { v[++n] = substr($0, RSTART + 15, RLENGTH - 15) + 0 }
        match($0, /"peak_arena_bytes":[^,}]*/) { p = substr($0, RSTART + 19, RLENGTH - 19) + 0; if (p > peak) peak = p }
        END {
            if (!n) exit 1
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
            printf "bench train impl=diffc math=%s batch=%d images_per_s=%.2f median_images_per_s=%.2f peak_gpu_mb=%d\n",
                   math == "no" ? "tf32" : math, batch, v[n], v[int((n + 1) / 2)], peak / 1048576
        }' "$dir/out/metrics.jsonl"
}

stage_train() {
    have_gpu || { note="no GPU: skipped"; return 77; }
    [[ -x $build/diffc ]] || { note="no $build/diffc: run the build stage first"; return 1; }
    local batch=${GPU_CHECK_TRAIN_BATCH:-128} steps=${GPU_CHECK_TRAIN_STEPS:-25} warmup=5 dir=$build/bench-train
    local results="" line run impl math lim failed=() torch_ok=1 end=$((SECONDS + ${GPU_CHECK_TRAIN_SECONDS:-330}))
    mkdir -p "$dir"
    [[ -e $dir/cifar/data_batch_1.bin ]] ||
        quiet "$python" scripts/bench_train_torch.py make-cifar "$dir/cifar/data_batch_1.bin" --count 2048 ||
        { note="could not write the CIFAR-10 file"; return 1; }
    if ! "$python" -c 'import diffusers' 2>/dev/null; then
        if compgen -G "$carry/wheels/*.whl" >/dev/null &&
            quiet "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target "$site" "$carry"/wheels/*.whl; then
            export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
        fi
        if ! "$python" -c 'import diffusers' >>"$log" 2>&1; then
            torch_ok=0
            say "PyTorch side: $python cannot import diffusers (carry .gpu-carry/wheels): diffc's numbers alone"
        fi
    fi
    say "-- configs/cifar10-ddpm.json, batch $batch, $warmup + $steps steps: diffc train --device cuda, then"
    say "   diffusers' UNet2DModel on PyTorch"
    # the dataset cache is built outside the measured runs
    quiet ours timeout -k 10 120 "$build/diffc" train --config configs/cifar10-ddpm.json --train-data-dir "$dir/cifar" \
        --cache-dir "$dir/cache" --output-dir "$dir/out" --train-batch-size 2 --max-train-steps 1 \
        --sample-every 0 --checkpointing-steps 0 --device cuda ||
        { note="diffc train failed"; show_tail; return 1; }
    local runs=("diffc no" "diffc bf16" "torch tf32" "torch bf16") left=4
    for run in "${runs[@]}"; do
        read -r impl math <<<"$run"
        # this run's time limit: its share of what is left of the stage's, at most 150 s
        lim=$(((end - SECONDS) / left))
        left=$((left - 1))
        [[ $lim -le 150 ]] || lim=150
        [[ $impl == torch && $torch_ok -eq 0 ]] && continue
        if [[ $lim -lt 20 ]]; then
            say "$impl $math: no time left (GPU_CHECK_TRAIN_SECONDS)"
            failed+=("$impl/$math")
            continue
        fi
        if [[ $impl == diffc ]]; then
            line=$(train_diffc "$math" "$batch" "$steps" "$warmup" "$lim" 2>>"$log") || line=""
        else
            line=$(timeout -k 10 "$lim" "$python" -u scripts/bench_train_torch.py train --device cuda \
                --config configs/cifar10-ddpm.json --math "$math" --batch "$batch" --steps "$steps" \
                --warmup "$warmup" 2>>"$log") || line=""
        fi
        if [[ -n $line ]]; then
            say "$line"
            results+=$line$'\n'
        else
            say "$impl $math: failed or out of time ($lim s): see train.log"
            show_tail 10
            failed+=("$impl/$math")
        fi
    done
    rm -rf "$dir/out"
    say "== train: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1); configs/cifar10-ddpm.json, batch $batch;"
    say "   images/s: best and median of $steps steps after $warmup; TFLOP/s of the best, from 3x the"
    say "   forward's conv/linear/attention FLOPs (PyTorch's count); peak GPU memory in MiB (diffc: its"
    say "   arenas' high-water mark; PyTorch: its allocator's peak); speed = diffc / PyTorch"
    awk "$awk_field"'
        NF { r[field($0, "impl") " " field($0, "math")] = $0; g = field($0, "fwd_gflop_per_image") + 0; if (g) gflop = g }
        function cols(line,    ips) {
            if (line == "") return sprintf("%8s %8s %8s %8s", "-", "-", "-", "-")
            ips = field(line, "images_per_s")
            return sprintf("%8s %8s %8s %8s", ips, field(line, "median_images_per_s"), field(line, "peak_gpu_mb"),
                           gflop ? sprintf("%.1f", 3 * gflop * ips / 1000) : "-")
        }
        END {
            printf "%-5s %35s %35s\n", "", "diffc", "pytorch"
            printf "%-5s %8s %8s %8s %8s %8s %8s %8s %8s %7s\n", "math", "img/s", "median", "peak MB", "TFLOP/s",
                   "img/s", "median", "peak MB", "TFLOP/s", "speed"
            split("tf32 bf16", m, " ")
            for (i = 1; i <= 2; i++) {
                d = r["diffc " m[i]]; t = r["torch " m[i]]
                printf "%-5s %s %s %7s\n", m[i], cols(d), cols(t),
                       d == "" || t == "" ? "-" : sprintf("%.2fx", field(d, "images_per_s") / field(t, "images_per_s"))
            }
        }' <<<"$results" | tee -a "$log"
    note="$(awk '/impl=diffc/ { for (i = 1; i <= NF; i++) if ($i ~ /^(math|images_per_s)=/) printf "%s ", $i }' <<<"$results")"
    [[ $torch_ok -eq 1 ]] || note+="(no PyTorch side) "
    [[ ${#failed[@]} -eq 0 ]] || { note+="failed: ${failed[*]}"; return 1; }
}

# ---- dist ----

stage_dist() {
    have_gpu || { note="no GPU: skipped"; return 77; }
    [[ -x $build/diffc ]] || { note="no $build/diffc: run the build stage first"; return 1; }
    local rc=0 table
    table=$(ours env BENCH_CUDA_BUILD="$build" timeout -k 10 "${GPU_CHECK_DIST_SECONDS:-240}" \
        bash scripts/bench.sh dist --reps "${GPU_CHECK_TRAIN_STEPS:-25}" 2>>"$log") || rc=$?
    say "$table"
    [[ $rc -eq 0 ]] || { note="bench.sh dist failed or ran out of time (exit $rc)"; show_tail; return 1; }
    note=$(grep '^all-reduce' <<<"$table" || true)
}

# ---- the stages ----

[[ ${stages[*]} == fetch ]] || setup_env
summary=() any_failed=0
for stage in "${stages[@]}"; do
    log=$out/$stage.log
    : >"$log"
    echo "== $stage"
    note="" rc=0 t0=$SECONDS
    "stage_$stage" || rc=$?
    trim_log
    case $rc in
    0) status=ok ;;
    77) status=skipped ;;
    *) status=FAILED; any_failed=1 ;;
    esac
    line=$(printf '%-9s %-7s %4d s  %s' "$stage" "$status" $((SECONDS - t0)) "$note")
    echo "$line"
    summary+=("$line")
    printf '%s\n' "${summary[@]}" >"$out/summary.txt"
done
echo "== summary (logs in $out)"
printf '%s\n' "${summary[@]}"
exit "$any_failed"
