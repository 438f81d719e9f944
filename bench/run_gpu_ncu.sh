#!/usr/bin/env bash
# One device call: build radio, then ncu (stall reasons, scheduler, memory, occupancy) of the
# qlinear kernels on NCU_SHAPE (N x K, default 49152x12288) at NCU_BPW (default 4.0) for the
# token counts NCU_TOKENS (default "1 16"), with the fmma kernel taking 1..FMMA tokens (default
# 32; FMMA=0: off).
# STREAM=N: the stream kernel takes 1..N tokens on any layer (sm_90; 0: off; unset: the library's
# default, 4..16 tokens on layers of >= 4096 chunk-units), with STREAM_GROUPS (2).
# NCU_SOURCE=1 adds executed instructions and stall samples per SASS instruction of the kernel
# matching NCU_SOURCE_KERNEL (default fmma_kernel), 1 launch (CSV).
# H2_BOTH=1 (with FMMA=0: otherwise fmma takes one token): one token runs on the half2 kernel
# (hgemv_kernel, the default at 1 token on this layer) and then on gemv.
# STREAM_H2=G: one f16 token runs on the stream kernel's half2 consumers with G consumer groups
# (1..3; off by default).
# NCU_ORDER=sorted: the layer's units in radio.quantize's depth order (bench_gemm.choose_depths;
# default random).
# NO_BUILD=1 skips the build (after bench/run_gpu_kernels.sh in the same call).
# Usage (repository root, .deps carried): [FMMA=0] [STREAM=8] [NCU_TOKENS="1 16"] bash bench/run_gpu_ncu.sh
set -uo pipefail
OUT=${OUT:-/tmp/radio-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 CMAKE_BUILD_PARALLEL_LEVEL=16
if [ -z "${NO_BUILD:-}" ]; then  # NO_BUILD=1: radio is already installed by this call
  source bench/gpu_build.sh
  radio_gpu_build "$OUT/build.log" || exit 1
fi
cat > /tmp/radio_ncu_case.py <<PY
import sys, torch
sys.path.insert(0, "bench")
from bench_gemm import make_layer
from radio import ops
from radio._ext import _cuda
_cuda.set_fmma_tokens(1, ${FMMA:-32}, ${FMMA:-32})
if "${STREAM:-}":
    _cuda.set_stream_tokens(1, int("${STREAM:-0}"))
_cuda.set_stream_groups(${STREAM_GROUPS:-2})
if "${STREAM_H2:-}":
    _cuda.set_stream_h2(0, int("${STREAM_H2:-2}"))
n, k = (int(v) for v in "${NCU_SHAPE:-49152x12288}".split("x"))
layer = make_layer(n, k, ${NCU_BPW:-4.0}, seed=1, depth_order="${NCU_ORDER:-random}")
for tokens in [int(t) for t in "${NCU_TOKENS:-1 16}".split()]:
    ops.qlinear(torch.randn(tokens, k, device="cuda").half(), **layer)
    if tokens == 1 and "${H2_BOTH:-}":  # one token on gemv too (the half2 kernel is the default)
        before = _cuda.gemv_h2_min_chunk_units()
        _cuda.set_gemv_h2_min_chunk_units(-1)
        ops.qlinear(torch.randn(1, k, device="cuda").half(), **layer)
        _cuda.set_gemv_h2_min_chunk_units(before)
torch.cuda.synchronize()
PY
timeout 300 ncu --kernel-name regex:"fmma_kernel|gemv_kernel|qmma_kernel|stream_kernel" --launch-count 2 \
  --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy \
  --section LaunchStats --section MemoryWorkloadAnalysis --section InstructionStats \
  --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio",l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum,smsp__inst_executed.sum \
  python3 /tmp/radio_ncu_case.py > "$OUT/ncu.txt" 2>&1
echo "ncu exit code $?"
grep -vE "^==PROF==|^ *$|---" "$OUT/ncu.txt" | grep -E "kernel|Duration|Throughput|Pipe|Registers|Shared Memory|Block Limit|Achieved|Theoretical Occ|Issued|Eligible|No Eligible|Warp Cycles|stalled|wavefronts|conflicts|inst_executed|Busy|Hit Rate" \
  | awk '!/stalled/ || $NF + 0 > 0.05' | sed -E 's/smsp__average_warps_issue_stalled_(.*)_per_issue_active.ratio/stall \1/' | head -120
if [ -n "${NCU_SOURCE:-}" ]; then
  # Executed instructions and stall samples per SASS instruction of one kernel (first launch).
  K=${NCU_SOURCE_KERNEL:-fmma_kernel}
  timeout 200 ncu --kernel-name regex:"$K" --launch-count 1 --section SourceCounters \
    --section WarpStateStats -o "$OUT/source" -f python3 /tmp/radio_ncu_case.py > /dev/null 2>&1
  echo "ncu source exit code $?"
  ncu -i "$OUT/source.ncu-rep" --page source --csv --print-source sass > "$OUT/${K}_sass.csv" 2>&1
  echo "source page exit code $?; $(wc -l < "$OUT/${K}_sass.csv") lines"
  rm -f "$OUT/source.ncu-rep"
fi
