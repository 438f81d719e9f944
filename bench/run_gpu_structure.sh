#!/usr/bin/env bash
# One device call, no radio build: the standalone structure benchmarks (bench/read_ceiling.cu:
# what a plain read of a layer's bytes reaches per load structure and launch mode;
# bench/decode_ladder.cu: hgemv's structure rebuilt one part at a time). Logs go to $OUT.
# Usage (repository root): bash bench/run_gpu_structure.sh
set -uo pipefail
OUT=${OUT:-/tmp/radio-gpu-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv | tee "$OUT/gpu.txt"
for name in read_ceiling decode_ladder; do
  echo "=== $name ($(date +%T))"
  nvcc -std=c++17 -O3 -arch=sm_90 -I cuda -o "/tmp/$name" "bench/$name.cu" || { echo "BUILD FAILED"; exit 1; }
  timeout 240 "/tmp/$name" 2>&1 | tee "$OUT/$name.txt"
done
