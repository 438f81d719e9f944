#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang++ and AddressSanitizer + UBSan, writes the
# seed corpora of valid files, and fuzzes each target on one core.
#
#   tools/fuzz.sh [--seconds S | --runs N] [--target load|layer|all] [--build DIR] [--corpus DIR]
#
#   --seconds S   fuzz each target for S seconds (default 30)
#   --runs N      fuzz each target for N executions instead (no time limit unless --seconds)
#   --target      which target(s) to run (default all)
#   --build DIR   build directory (default build/fuzz)
#   --corpus DIR  working corpus, kept between runs (default DIR/corpus of the build directory);
#                 seeded from the generated seeds, grown by the fuzzer
#
# Any crash, hang (> 10 s for one input), sanitizer report, uncaught exception or allocation
# above 64 MB stops the run with a non-zero status and leaves the input in BUILD/artifacts/.
# Prints, per target: executions, seconds, executions/s and the corpus size.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="" runs="" target=all build=build/fuzz corpus=""
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --target) target=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --corpus) corpus=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "tools/fuzz.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ -z "$seconds" ] && [ -z "$runs" ] && seconds=30
corpus=${corpus:-$build/corpus}
case "$target" in
  all) targets="load layer" ;;
  load|layer) targets=$target ;;
  *) echo "tools/fuzz.sh: --target must be load, layer or all, got '$target'" >&2; exit 2 ;;
esac
command -v clang++ >/dev/null || { echo "tools/fuzz.sh: clang++ not found (apt-get install clang)" >&2; exit 2; }

echo "== fuzz: build ($build, clang++, -fsanitize=fuzzer,address,undefined)"
cmake -S . -B "$build" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
      -DRADIO_BUILD_FUZZ=ON -DRADIO_BUILD_PYTHON=OFF -DRADIO_CUDA=OFF >/dev/null
cmake --build "$build" -j 2 --target fuzz_load fuzz_layer make_seed_corpus

seeds=$build/seeds
rm -rf "$seeds"
mkdir -p "$seeds/load" "$seeds/layer" "$build/artifacts"
"$build/tests/fuzz/make_seed_corpus" "$seeds/load" "$seeds/layer"

for t in $targets; do
  mkdir -p "$corpus/$t"
  cp -n "$seeds/$t"/* "$corpus/$t"/ 2>/dev/null || true
  limits=()
  [ -n "$seconds" ] && limits+=("-max_total_time=$seconds")
  [ -n "$runs" ] && limits+=("-runs=$runs")
  log=$build/fuzz_$t.log
  echo "== fuzz: $t (${limits[*]}), corpus $corpus/$t, log $log"
  start=$(date +%s)
  # One process, one core. -malloc_limit_mb: a single allocation above 64 MB is a failure (the
  # inputs are at most a few hundred KB, so a loader that sizes memory from the file never comes
  # near it). UBSan/ASan stop at the first report.
  status=0
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1} \
    "$build/tests/fuzz/fuzz_$t" "$corpus/$t" "${limits[@]}" -malloc_limit_mb=64 \
      -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      -artifact_prefix="$build/artifacts/$t-" >"$log" 2>&1 || status=$?
  elapsed=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  files=$(find "$corpus/$t" -type f | wc -l)
  bytes=$(du -sk "$corpus/$t" | cut -f1)
  if [ "$status" -ne 0 ]; then
    tail -40 "$log" >&2
    echo "tools/fuzz.sh: fuzz_$t FAILED (status $status); reproducer in $build/artifacts/" >&2
    exit 1
  fi
  echo "fuzz_$t: ${execs:-?} executions in ${elapsed} s ($(( ${execs:-0} / (elapsed > 0 ? elapsed : 1) )) /s), corpus $files files, ${bytes} KB, no crash/hang/sanitizer report"
done
