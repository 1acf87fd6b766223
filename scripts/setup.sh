#!/usr/bin/env bash
# Install the Debian/Ubuntu packages diffc needs that are not installed yet.
# Idempotent: does nothing when everything is there. Works as root or via sudo.
#   scripts/setup.sh            build and test dependencies
#   scripts/setup.sh --data     also the Fashion-MNIST dataset used by the demo
set -euo pipefail

packages=(build-essential cmake pkg-config libopenblas-dev libopenblas-openmp-dev libopenblas-pthread-dev libcjson-dev libpng-dev libjpeg-dev
          zlib1g-dev libutf8proc-dev check clang libomp-dev libclang-rt-dev openmpi-bin libopenmpi-dev)
[[ "${1:-}" == "--data" ]] && packages+=(dataset-fashion-mnist)

missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    sudo=(sudo)
fi
echo "setup: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
