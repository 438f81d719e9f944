#!/usr/bin/env bash
# One device call: A/B of kernel experiments kept as patches against main (bench/experiments/).
# Builds this tree ("main"), then this tree plus each patch in a copy, and for each build runs the
# quick kernel benchmark side by side with f16 (bench_gemm.py --quick --no-prefill --tokens 1 4 8
# 16: 4096x4096 and 49152x12288 at 3.0 and 4.0 bpw). TESTS=1 adds the CUDA op tests per build
# (those matching AB_TESTS_K when set, pytest -k; the first build, main, skips them then);
# PROFILE=1 adds ncu stall reasons, the L1 throughput breakdown and shared-memory wavefronts of the
# 1-token gemv and 16-token qmma kernels (49152x12288 at NCU_BPW, default 4.0); DECODE=1 adds the
# end-to-end batch-1 decode benchmark (bench_decode.py: SmolLM2 and Llama-2-7B shapes; arguments
# in AB_DECODE_ARGS).
# AB_BENCH_ARGS replaces the benchmark's arguments (default "--quick --no-prefill --tokens 1 4 8
# 16"), AB_BENCH_TIMEOUT its time limit per build (default 120 s).
# Each patch names the commit it applies to; one made against an older main may not apply.
# Usage (repository root, .deps carried): [TESTS=1] [PROFILE=1] bash bench/run_gpu_ab.sh PATCH...
set -uo pipefail
OUT=${OUT:-/tmp/radio-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=16
ROOT=$PWD
source bench/gpu_build.sh

cat > /tmp/radio_ab_ncu_case.py <<PY
import sys, torch
sys.path.insert(0, "bench")
from bench_gemm import make_layer
from radio import ops
layer = make_layer(49152, 12288, ${NCU_BPW:-4.0}, seed=1)
for tokens in (1, 16):
    ops.qlinear(torch.randn(tokens, 12288, device="cuda").half(), **layer)
torch.cuda.synchronize()
PY

measure() {  # $1: name of the build installed now
  if [ -n "${TESTS:-}" ] && { [ -z "${AB_TESTS_K:-}" ] || [ "$1" != main ]; }; then
    timeout 200 python3 -m pytest -q -p no:cacheprovider tests/python/test_cuda_ops.py \
      ${AB_TESTS_K:+-k "$AB_TESTS_K"} > "$OUT/tests_$1.log" 2>&1
    echo "tests ($1): $(tail -1 "$OUT/tests_$1.log")"
  fi
  # shellcheck disable=SC2086  # AB_BENCH_ARGS is a word list
  timeout "${AB_BENCH_TIMEOUT:-120}" python3 bench/bench_gemm.py \
    ${AB_BENCH_ARGS:---quick --no-prefill --tokens 1 4 8 16} \
    --json "$OUT/bench_$1.json" > "$OUT/bench_$1.log" 2>&1
  grep -E "^device|^ *[0-9]+x[0-9]+|FAIL|disagrees" "$OUT/bench_$1.log"
  if [ -n "${DECODE:-}" ]; then
    # shellcheck disable=SC2086  # AB_DECODE_ARGS is a word list
    timeout 150 python3 bench/bench_decode.py ${AB_DECODE_ARGS:-} --json "$OUT/decode_$1.json" \
      > "$OUT/decode_$1.log" 2>&1
    grep -E "shapes" "$OUT/decode_$1.log"
  fi
  if [ -n "${PROFILE:-}" ]; then
    local kernels='regex:gemv_kernel|qmma_kernel'
    timeout 120 ncu --kernel-name "$kernels" --launch-count 2 \
      --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio" \
      python3 /tmp/radio_ab_ncu_case.py > "$OUT/ncu_stalls_$1.txt" 2>&1
    timeout 120 ncu --kernel-name "$kernels" --launch-count 2 \
      --metrics breakdown:l1tex__throughput.avg.pct_of_peak_sustained_elapsed,gpu__time_duration.sum,smsp__inst_executed.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__warps_active.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum \
      python3 /tmp/radio_ab_ncu_case.py > "$OUT/ncu_l1_$1.txt" 2>&1
    # Stall reasons above 0.1 cycles per issued instruction, L1 sub-units above 5%.
    cat "$OUT/ncu_stalls_$1.txt" "$OUT/ncu_l1_$1.txt" | grep -vE "^==|^ *$|---|Metric Name|Section:" \
      | awk '/kernel/ || ($NF + 0 > 0.1 && !/pct_of_peak/) || ($NF + 0 > 5) || /duration|inst_executed|wavefronts|conflicts/' \
      | sed -E 's/smsp__average_warps_issue_stalled_(.*)_per_issue_active.ratio/stall \1/'
  fi
}

echo "=== main ($(date +%T))"
radio_gpu_build "$OUT/build_main.log" || exit 1
measure main
for PATCH in "$@"; do
  NAME=$(basename "$PATCH" .patch)
  echo "=== main + $NAME ($(date +%T))"
  rm -rf "/tmp/ab_$NAME" && mkdir "/tmp/ab_$NAME" && cp -r "$ROOT"/. "/tmp/ab_$NAME/"
  (cd "/tmp/ab_$NAME" && patch -p1 -s < "$ROOT/$PATCH" && radio_gpu_build "$OUT/build_$NAME.log") \
    || { echo "$NAME: patch or build failed"; continue; }
  (cd "/tmp/ab_$NAME" && measure "$NAME")
done
rm -f "$OUT"/build_*.log
echo "=== end ($(date +%T))"
