#!/usr/bin/env bash
# The main job, end to end. For now: build diffc, show its commands and
# describe a weight file. (Training on Fashion-MNIST, sampling a grid and
# scoring anomalies arrive with the train and inference subcommands.)
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target diffc

echo "== diffc --help =="
build/diffc --help
weights=${1:-tests/fixtures/optim_adamw.safetensors}
echo "== diffc info $weights =="
build/diffc info "$weights"
