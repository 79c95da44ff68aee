#!/usr/bin/env bash
# Build llama.cpp's `llama-server` from the llama.cpp tree vendored in the
# llama-cpp-python sdist on PyPI, and print the path of the binary.
#
# Usage: scripts/llama-server.sh
#
# stdout: exactly one line, the absolute path of a working llama-server binary.
# stderr: progress lines (the build log goes to a file whose path is printed).
#
# Environment:
#   NOMYO_LLAMA_CACHE       cache root (default: $HOME/.cache/nomyo-router)
#   NOMYO_LLAMA_KEEP_BUILD  1 keeps the unpacked sources and the cmake build tree
#   PYTHON                  interpreter whose pip downloads the sdist (default: python3)
#
# The binary lives in ${NOMYO_LLAMA_CACHE}/llama-server-<version>/llama-server.
# When it already exists and answers `--version`, nothing is downloaded or built.
# The build is CPU only, Release, static (-DBUILD_SHARED_LIBS=OFF), without
# HTTPS/curl and without the web UI, and builds only the llama-server target.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="0.3.36"

CACHE_ROOT="${NOMYO_LLAMA_CACHE:-$HOME/.cache/nomyo-router}"
DEST_DIR="${CACHE_ROOT}/llama-server-${LLAMA_CPP_PYTHON_VERSION}"
BINARY="${DEST_DIR}/llama-server"
PYTHON="${PYTHON:-python3}"
JOBS=2

log() {
    printf '[llama-server.sh] %s\n' "$*" >&2
}

die() {
    log "error: $*"
    exit 1
}

# binary_works PATH: succeed when PATH is an executable that answers --version.
binary_works() {
    [[ -x "$1" ]] && "$1" --version >/dev/null 2>&1
}

# install_build_tools: make sure cmake and a C++ compiler are available,
# installing them with apt-get when they are missing.
install_build_tools() {
    local missing=()
    command -v cmake >/dev/null 2>&1 || missing+=(cmake)
    command -v g++ >/dev/null 2>&1 || missing+=(g++)
    command -v make >/dev/null 2>&1 || missing+=(make)
    if [[ ${#missing[@]} -eq 0 ]]; then
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and apt-get is not available"
    local sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "missing ${missing[*]}; run as root or install sudo"
        sudo=(sudo)
    fi
    log "installing ${missing[*]} with apt-get"
    "${sudo[@]}" apt-get update >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends "${missing[@]}" >&2
}

# fetch_sources WORK: download the pinned sdist into WORK, unpack it there
# and print the path of its vendored llama.cpp tree.
fetch_sources() {
    local work="$1"
    log "downloading llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION} sdist"
    "$PYTHON" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
        "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}" -d "${work}/sdist" >&2
    local archive="${work}/sdist/llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    [[ -f "$archive" ]] || die "sdist archive not found: ${archive}"
    log "unpacking $(basename "$archive")"
    tar -xzf "$archive" -C "$work"
    local src="${work}/llama_cpp_python-${LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp"
    [[ -f "${src}/CMakeLists.txt" ]] || die "no vendored llama.cpp in the sdist"
    # The sdist keeps a `.git` file pointing at a submodule directory that does
    # not exist; removing it keeps llama.cpp's build-info step away from git.
    rm -f "${src}/.git"
    printf '%s\n' "$src"
}

# build_server SRC BUILD: configure and build the llama-server target.
build_server() {
    local src="$1" build="$2"
    local build_log="${DEST_DIR}/build.log"
    : > "$build_log"
    log "building llama-server (6 to 25 minutes, once); its build log: ${build_log}"
    if ! configure_and_build "$src" "$build" >>"$build_log" 2>&1; then
        tail -n 40 "$build_log" >&2
        die "the llama-server build failed; the whole log is ${build_log}"
    fi
}

configure_and_build() {
    local src="$1" build="$2"
    log "configuring (cmake) in ${build}"
    cmake -S "$src" -B "$build" \
        -DCMAKE_BUILD_TYPE=Release \
        -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_CURL=OFF \
        -DLLAMA_OPENSSL=OFF \
        -DLLAMA_BUILD_UI=OFF \
        -DLLAMA_USE_PREBUILT_UI=OFF \
        -DLLAMA_BUILD_SERVER=ON \
        -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_APP=OFF \
        -DGGML_CUDA=OFF \
        -DGGML_HIP=OFF \
        -DGGML_MUSA=OFF \
        -DGGML_VULKAN=OFF \
        -DGGML_METAL=OFF \
        -DGGML_SYCL=OFF \
        -DGGML_OPENCL=OFF \
        -DGGML_WEBGPU=OFF \
        -DGGML_BLAS=OFF \
        -DGGML_RPC=OFF \
        -DGGML_CCACHE=OFF
    log "building llama-server with -j${JOBS}"
    cmake --build "$build" --config Release --target llama-server -j "$JOBS"
}

main() {
    if binary_works "$BINARY"; then
        log "reusing ${BINARY}"
        printf '%s\n' "$BINARY"
        return 0
    fi

    mkdir -p "$DEST_DIR"

    # Serialise concurrent invocations sharing one cache directory.
    if command -v flock >/dev/null 2>&1; then
        exec 9>"${DEST_DIR}/.lock"
        flock 9
        if binary_works "$BINARY"; then
            log "reusing ${BINARY} (built by a concurrent run)"
            printf '%s\n' "$BINARY"
            return 0
        fi
    fi

    install_build_tools
    command -v "$PYTHON" >/dev/null 2>&1 || die "python interpreter '${PYTHON}' not found"

    local work="${DEST_DIR}/work"
    rm -rf "$work"
    mkdir -p "$work"

    local start src
    start="$(date +%s)"
    src="$(fetch_sources "$work")"
    build_server "$src" "${work}/build"

    local built="${work}/build/bin/llama-server"
    [[ -x "$built" ]] || die "build finished but ${built} is missing"
    cp "$built" "${BINARY}.tmp"
    mv -f "${BINARY}.tmp" "$BINARY"
    binary_works "$BINARY" || die "${BINARY} does not run"
    log "built in $(( $(date +%s) - start ))s: $("$BINARY" --version 2>&1 | head -n 1)"

    if [[ "${NOMYO_LLAMA_KEEP_BUILD:-0}" != "1" ]]; then
        rm -rf "$work"
    fi

    printf '%s\n' "$BINARY"
}

main "$@"
