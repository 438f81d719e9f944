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

echo "== C++ package: cmake --install, then examples/cpp builds against find_package(radio)"
cmake --install "$build" >/dev/null
cmake -S examples/cpp -B "$build/example" -G Ninja -DCMAKE_PREFIX_PATH="$build/prefix" >/dev/null
cmake --build "$build/example" -j "$jobs"
"$build/example/radio_example"

echo "== Python tests"
python3 -m pytest -q tests/python "$@"
