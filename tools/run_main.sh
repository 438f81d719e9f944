#!/usr/bin/env bash
# The main job (README "Quantize a real model"): installs everything, then quantizes the real
# SmolLM2-135M offline with radio's default self-generated calibration, printing WikiText-2
# perplexity before and after, the achieved bits per weight and the size. Extra arguments go to
# examples/quantize_smollm2.py (see --help there).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/install_deps.sh
exec python3 examples/quantize_smollm2.py "$@"
