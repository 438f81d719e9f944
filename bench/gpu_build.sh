# Sourced by the bench/run_gpu_*.sh scripts: builds and installs radio (radio._core and radio._cuda
# for sm_90) from the current directory on the GPU machine. .deps/ (Eigen, nlohmann_json, zlib
# copied from the dev machine, listed in .git/info/exclude) stands in for system headers the image
# lacks. Usage: radio_gpu_build LOGFILE (returns non-zero and prints the log's tail on failure).
radio_gpu_build() {
  local log=$1
  local args=(-Ccmake.define.RADIO_CUDA=ON -Ccmake.define.CMAKE_CUDA_ARCHITECTURES=90-real
              -Ccmake.define.pybind11_DIR="$(python3 -m pybind11 --cmakedir)")
  if [ ! -d /usr/include/eigen3 ] || [ ! -d /usr/include/nlohmann ] || [ ! -f /usr/include/zlib.h ]; then
    args+=(-Ccmake.define.CMAKE_PREFIX_PATH="$PWD/.deps" -Ccmake.define.ZLIB_ROOT="$PWD/.deps")
  fi
  rm -rf build/cp312-*  # a configure cached with other definitions would be reused
  if ! python3 -m pip install --no-build-isolation --no-deps -q . "${args[@]}" > "$log" 2>&1; then
    tail -40 "$log"
    echo "BUILD FAILED"
    return 1
  fi
}
