#!/usr/bin/env bash
# The test command (README "Run the tests"): installs what is needed, then runs every test that
# can run on this machine — C++ (Catch2 via ctest), the installed C++ package used by
# examples/cpp, and Python (pytest). GPU tests skip cleanly without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=$(nproc 2>/dev/null || echo 2)

bash tools/install_deps.sh

echo "== C++ core: configure, build, Catch2 tests"
build=${RADIO_TEST_BUILD_DIR:-$root/build/tests}
cmake -S . -B "$build" -G Ninja -DRADIO_BUILD_TESTS=ON -DRADIO_BUILD_PYTHON=OFF -DRADIO_CUDA=OFF \
      -DCMAKE_INSTALL_PREFIX="$build/prefix" >/dev/null
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure

echo "== C++ core under AddressSanitizer + UndefinedBehaviorSanitizer (-O1 keeps the build short)"
asan_build=${RADIO_ASAN_BUILD_DIR:-$root/build/tests-asan}
cmake -S . -B "$asan_build" -G Ninja -DRADIO_BUILD_TESTS=ON -DRADIO_BUILD_PYTHON=OFF -DRADIO_CUDA=OFF \
      -DRADIO_SANITIZE=address,undefined -DCMAKE_CXX_FLAGS_RELEASE=-O1 >/dev/null
cmake --build "$asan_build" -j "$jobs"
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir "$asan_build" --output-on-failure

echo "== fuzz: 30 s each over the file loader and the unpacker (tools/fuzz.sh)"
bash tools/fuzz.sh --seconds 30 --build "$root/build/fuzz"

echo "== C++ package: cmake --install, then examples/cpp builds against find_package(radio)"
cmake --install "$build" >/dev/null
cmake -S examples/cpp -B "$build/example" -G Ninja -DCMAKE_PREFIX_PATH="$build/prefix" >/dev/null
cmake --build "$build/example" -j "$jobs"
"$build/example/radio_example"

echo "== Python tests"
python3 -m pytest -q tests/python "$@"
