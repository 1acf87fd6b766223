#!/usr/bin/env bash
# The augmentation protocol of issue #18 on Fashion-MNIST: does synthetic data
# from a class-conditional diffc model help a small classifier beyond standard
# augmentation, at 1% and 10% of the labels?
#
#   scripts/augment_protocol.sh [SYNTHETIC ...]     (default: unl)
#
# Trains the generator unless MODEL names one (configs/fashion-mnist.json with
# GEN_STEPS steps; for unl, UNLABELLED_MODEL and configs/fashion-mnist-unlabelled.json:
# a generator that sees no label), then for each SYNTHETIC kind makes a set of synthetic
# images and runs `diffc augment --eval --eval-augment --eval-seeds SEEDS
# --real-fraction 0.01,0.1`: per fraction the columns real-only, real + standard
# augmentation (the baseline: random flip left-right and shift by up to 2
# pixels), real + synthetic (with the same standard augmentation), and CAS
# (trained on the synthetic images alone), each mean ± std over the seeds,
# after the quality table (Fréchet distance of the judge's features, the
# judge's classes of the synthetic images). Kinds:
#   gen   PER_CLASS class-conditional images per class at guidance GUIDANCE
#   var   VARIATIONS img2img variations at STRENGTH of every real image the
#         classifiers train on (--vary-eval-subsets)
#   unl   UNLABELLED images of the unlabelled generator, labelled by each
#         subset's own classifier (--unlabelled): the one kind whose synthetic
#         images carry no label the subset lacks (gen's and var's generator
#         learnt all 60,000 labels)
# The table of each kind is in OUT/KIND.txt. Target (#18): real + synthetic at
# least 3 points above real + standard augmentation at 1%, 1 point at 10%,
# beyond the seeds' spread.
#
# Environment: MODEL (a trained model folder; default: train OUT/generator),
# UNLABELLED_MODEL (default: train OUT/unlabelled-generator), UNLABELLED (10000),
# GEN_STEPS (3000), PER_CLASS (50), GUIDANCE (1.5), VARIATIONS (1), STRENGTH
# (0.5), STEPS (DDIM steps, 20), SEEDS (3), EVAL_STEPS (classifier steps, 2000),
# SYNTHETIC_PROB (unset: train on the union), FILTER (unset: no filter; a
# threshold T keeps the images the judge gives their class above T), OUT
# (out/augment-protocol), AUGMENT_OPTS (more `diffc augment` options).
# The defaults are the best measured recipe (README, "Second round"): a
# generator of 2,000+ steps, 500 images at guidance 1.5, classifiers of 2,000
# steps (at 500 the classifier is under-trained and standard augmentation cost
# 1.5 points at 10%). Measured with them (checkpoint-2000, seeds 0-2):
#   1%:  real + std 80.94 ± 1.27, real + std + synthetic 81.82 ± 0.79 (CAS 74.86)
#   10%: real + std 87.87 ± 0.38, real + std + synthetic 87.58 ± 0.37
# (+0.9 and -0.3 points: #18's targets, +3 and +1, are not reached.) That
# generator learnt all 60,000 labels. The fair kind, unl (UNLABELLED_MODEL
# trained 4,000 steps, FILTER=0.9, AUGMENT_OPTS="--batch-size 64"): 80.42 ± 0.83
# at 1% and 86.69 ± 0.40 at 10%, below the baseline; README, "Third round",
# shows why no generator can reach the targets with this classifier.
# Sets already made in OUT are reused (augment resumes), so the classifier side
# can be rerun alone. Cost on 2 shared cores, one thread: generation ~3-10
# images/s; each 2,000-step classifier ~40 s of a core, 4 per fraction and seed.
set -euo pipefail
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cd "$(dirname "$0")/.."

data=/usr/share/datasets/fashion-mnist
out=${OUT:-out/augment-protocol}
fractions=0.01,0.1
kinds=("$@")
[ ${#kinds[@]} -gt 0 ] || kinds=(unl)

scripts/setup.sh --data >/dev/null
[ -f build/CMakeCache.txt ] || cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j2 --target diffc >/dev/null
mkdir -p "$out"

# generator FOLDER CONFIG: train FOLDER from CONFIG unless it holds a model.
generator() {
    if [ ! -f "$1/model_index.json" ] && [ ! -f "$1/config.json" ]; then
        echo "== training $1 ($2, ${GEN_STEPS:-3000} steps) =="
        build/diffc train --config "$2" --max-train-steps "${GEN_STEPS:-3000}" \
            --output-dir "$1" --cache-dir "$out/cache" >"$1.log" 2>&1 ||
            { echo "training failed: $(tail -1 "$1.log")"; exit 1; }
    fi
}

common=(--train-data-dir "$data" --cache-dir "$out/cache" --num-inference-steps "${STEPS:-20}"
    --eval --eval-data-dir "$data" --real-fraction "$fractions" --eval-augment --eval-seeds "${SEEDS:-3}"
    --eval-steps "${EVAL_STEPS:-2000}")
[ -z "${SYNTHETIC_PROB:-}" ] || common+=(--synthetic-prob "$SYNTHETIC_PROB")
[ -z "${FILTER:-}" ] || common+=(--filter-threshold "$FILTER")
for kind in "${kinds[@]}"; do
    case $kind in
    gen) what=(--per-class "${PER_CLASS:-50}" --guidance-scale "${GUIDANCE:-1.5}") ;;
    var) what=(--variations "${VARIATIONS:-1}" --strength "${STRENGTH:-0.5}" --vary-eval-subsets) ;;
    unl) what=(--unlabelled "${UNLABELLED:-10000}") ;;
    *) echo "unknown kind '$kind' (gen, var, unl)"; exit 2 ;;
    esac
    if [ "$kind" = unl ]; then
        model=${UNLABELLED_MODEL:-$out/unlabelled-generator}
        generator "$model" configs/fashion-mnist-unlabelled.json
    else
        model=${MODEL:-$out/generator}
        generator "$model" configs/fashion-mnist.json
    fi
    # The judge is the same for every kind: train it once.
    mkdir -p "$out/$kind"
    [ ! -f "$out/judge.safetensors" ] || cp -n "$out/judge.safetensors" "$out/$kind/filter_classifier.safetensors"
    echo "== $kind: ${what[*]} =="
    start=$(date +%s)
    # shellcheck disable=SC2086 # AUGMENT_OPTS is a list of options
    build/diffc augment --model "$model" "${common[@]}" "${what[@]}" --output-dir "$out/$kind" ${AUGMENT_OPTS:-} \
        >"$out/$kind.txt" 2>"$out/$kind.log" ||
        { echo "$kind failed: $(tail -1 "$out/$kind.log")"; exit 1; }
    cp -n "$out/$kind/filter_classifier.safetensors" "$out/judge.safetensors"
    cat "$out/$kind.txt"
    echo "($kind: $(($(date +%s) - start)) s)"
done
