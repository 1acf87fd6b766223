#!/usr/bin/env bash
# The main job, end to end, on the CPU (DIFFC_DEVICE=auto uses a GPU where
# there is one; the default stays the CPU until the CUDA backend has run on one):
# train the class-conditional configs/fashion-mnist.json model on the
# Fashion-MNIST data of Debian's dataset-fashion-mnist package (checkpoints,
# metrics, TensorBoard logs, sample grids), then sample 40 new images, four of
# each class; then anomaly detection: a small model trained on trousers alone
# scores 500 test images by reconstruction error (trousers normal, the other
# nine classes anomalous) and reports the AUROC. It prints what it took on
# which CPU at the end; README.md says what it took where we measured it.
# Everything goes to out/demo (started afresh).
#   scripts/demo.sh [extra diffc train options, e.g. --max-train-steps 100]
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --data
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target diffc

out=out/demo
data=/usr/share/datasets/fashion-mnist
device=${DIFFC_DEVICE:-cpu}
rm -rf "$out"
mkdir -p "$out"

echo "== the data =="
build/diffc info "$data"

echo "== training (progress on stderr; metrics in $out/metrics.jsonl) =="
build/diffc train --config configs/fashion-mnist.json --output-dir "$out" \
    --cache-dir "$out/cache" --device "$device" "$@" >"$out/train_config.txt"

echo "== sampling =="
build/diffc sample --model "$out" --output-dir "$out/generated" --num-images 40 \
    --class-label all --seed 1 --device "$device"

echo "== anomaly detection: trousers normal, everything else anomalous =="
build/diffc train --config configs/fashion-mnist-oneclass.json --classes Trouser --max-train-steps 400 \
    --output-dir "$out/trousers" --cache-dir "$out/cache" --device "$device" >/dev/null
build/diffc anomaly --model "$out/trousers" --images "$data" --normal-class Trouser --max-images 500 \
    --max-heatmaps 8 --output-dir "$out/anomaly" --device "$device"

echo "== done in $((SECONDS / 60)) min $((SECONDS % 60)) s on $(nproc) cores of $(lscpu | sed -n 's/^Model name: *//p') =="
echo "model (a diffusers pipeline folder): $out"
build/diffc info "$out/unet" | grep 'total:'
echo "sample grid during training: $(ls "$out"/samples/*.png 2>/dev/null | tail -1)"
echo "new images, one class per column (T-shirt, Trouser, ... Ankle boot): $out/generated/grid.png"
echo "anomaly scores and heatmaps: $out/anomaly (scores.csv, heatmaps/, evaluation.json)"
