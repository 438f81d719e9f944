#!/usr/bin/env bash
# One device call: build radio (radio._core + radio._cuda for sm_90) on the GPU machine, run the
# CPU and CUDA op tests, compute-sanitizer on a small case, and the kernel benchmark. Logs go to
# $OUT (the device tool brings them back). Usage (from the repository root, with .deps carried):
#   bash bench/run_gpu_kernels.sh [quick|full|tests|profile|quick-profile|tests-profile|custom]
# (tests-profile: build, tests, memcheck and ncu only: no benchmark; custom: bench_gemm.py with
# the arguments in BENCH_ARGS, timeout BENCH_TIMEOUT s). DECODE=1 adds the end-to-end decode
# benchmark to any mode that runs one (quick, full and quick-profile always run it; DECODE_ARGS
# replaces its arguments, default --compare-fmma). SMOKE=EXPR first runs the CUDA op and launch
# tests matching EXPR (pytest -x -k, 120 s) and stops on a failure or hang.
# SKIP_TESTS=1 skips the full test run and memcheck (a first look at a new kernel's speed).
# The build is bench/gpu_build.sh's.
set -uo pipefail
MODE=${1:-quick}
OUT=${OUT:-/tmp/radio-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=16
step() { echo "=== $* ($(date +%T))"; }

step "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv | tee "$OUT/gpu.txt"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
nvcc --version | tail -2
ls -d /usr/include/eigen3 /usr/include/nlohmann /usr/include/zlib.h 2>&1 | sed 's/^/system: /'

step "build"
source bench/gpu_build.sh
radio_gpu_build "$OUT/build.log" || exit 1
python3 -c 'import radio, radio._cuda as c; print("radio._cuda", c.__file__, "runtime", c.runtime_version()); print(c.config(1, 4096, 4096, 256)); print(c.config(16, 49152, 12288, 256))'

if [ -n "${SMOKE:-}" ]; then
  step "smoke tests (-k $SMOKE)"
  timeout 120 python3 -m pytest -x -q -p no:cacheprovider tests/python/test_cuda_ops.py \
    tests/python/test_cuda_launch.py -k "$SMOKE" \
    2>&1 | tee "$OUT/smoke.log" | tail -30
  [ "${PIPESTATUS[0]}" = 0 ] || { echo "SMOKE FAILED"; exit 1; }
fi

if [ -n "${SKIP_TESTS:-}" ]; then
  echo "(tests and memcheck skipped: SKIP_TESTS)"
else
step "tests"
timeout 400 python3 -m pytest -q -p no:cacheprovider tests/python/test_ops.py tests/python/test_cuda_ops.py tests/python/test_cuda_launch.py \
  2>&1 | tee "$OUT/tests.log" | tail -25
[ "$MODE" = tests ] && exit 0

step "compute-sanitizer memcheck (small case)"
timeout 240 compute-sanitizer --tool memcheck --error-exitcode 9 \
  python3 -m pytest -q -p no:cacheprovider tests/python/test_cuda_ops.py -k sanitize_small \
  > "$OUT/memcheck.log" 2>&1
echo "memcheck exit code $?"; grep -E "ERROR SUMMARY|passed|failed" "$OUT/memcheck.log" | tail -3
fi

if [ "$MODE" = profile ] || [ "$MODE" = quick-profile ] || [ "$MODE" = tests-profile ]; then
  step "ncu: 49152x12288 at 4 bpw: gemv (1 token), qmma (16), row-tile dequantize (2048)"
  cat > /tmp/radio_ncu_case.py <<'PY'
import sys, torch
sys.path.insert(0, "bench")
from bench_gemm import make_layer
from radio import ops
layer = make_layer(49152, 12288, 4.0, seed=1)
for tokens in (1, 16, 2048):
    x = torch.randn(tokens, 12288, device="cuda").half()
    ops.qlinear(x, **layer)
torch.cuda.synchronize()
PY
  timeout 240 ncu --kernel-name regex:"gemv_kernel|qmma_kernel|dequant_rows_kernel" --launch-count 3 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats \
    --section SchedulerStats --section Occupancy --section LaunchStats --section InstructionStats \
    --section MemoryWorkloadAnalysis_Tables \
    python3 /tmp/radio_ncu_case.py > "$OUT/ncu.txt" 2>&1
  echo "ncu exit code $?"
  grep -E "gemv_kernel|qmma_kernel|dequant_rows_kernel|Duration|Memory Throughput|DRAM Throughput|Compute \(SM\)|Achieved Occupancy|Issued Ipc|Stall|Warp Cycles Per Issued|L1/TEX Hit|L2 Hit|Mem Busy|Max Bandwidth|Registers Per|Executed Ipc" "$OUT/ncu.txt" | head -90
fi

step "instruction mix of the gemv kernel (1 token, f16), all depths"
SO=$(python3 -c 'import radio._cuda as c; print(c.__file__)')
if command -v cuobjdump > /dev/null; then
  cuobjdump -sass "$SO" | awk '/Function : .*gemv_kernelI6__halfLi1E/{f=1} /Function : /{if($0 !~ /gemv_kernelI6__halfLi1E/) f=0} f' \
    > "$OUT/gemv_f16_1.sass"
  grep -oE "^ +/\*[0-9a-f]{4}\*/ +[A-Z][A-Z0-9_.]*" "$OUT/gemv_f16_1.sass" | awk '{print $2}' \
    | sed 's/\..*//' | sort | uniq -c | sort -rn | head -14
fi

step "benchmark ($MODE)"
if [ "$MODE" = profile ] || [ "$MODE" = tests-profile ]; then
  echo "(benchmark skipped)"
elif [ "$MODE" = custom ]; then
  timeout "${BENCH_TIMEOUT:-300}" python3 bench/bench_gemm.py ${BENCH_ARGS:-} --json "$OUT/bench.json" 2>&1 \
    | tee "$OUT/bench.log"
elif [ "$MODE" = full ]; then
  timeout 420 python3 bench/bench_gemm.py --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
else
  timeout 300 python3 bench/bench_gemm.py --quick --tokens 1 2 4 8 16 32 --compare-small --compare-fmma \
    ${GEMV_WAVES:+--gemv-waves $GEMV_WAVES} --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
fi
if [ "$MODE" = quick ] || [ "$MODE" = full ] || [ "$MODE" = quick-profile ] || [ -n "${DECODE:-}" ]; then
  step "end-to-end decode (batch 1, CUDA graphs)"
  timeout 240 python3 bench/bench_decode.py ${DECODE_ARGS:---compare-fmma} --json "$OUT/decode.json" 2>&1 \
    | tee "$OUT/decode.log"
fi
step "done"
