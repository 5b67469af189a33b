#!/usr/bin/env bash
# llama.cpp for the benchmark's llama_cpp system: build it from llama-cpp-python's source
# distribution (which vendors llama.cpp) into the active Python environment, then write a model
# folder's weights as GGUF with llama.cpp's own converter (vendored in the same distribution).
#
# usage: bash scripts/llama_cpp.sh MODEL_DIR OUT.gguf [f32|bf16|f16]
# The build takes about 8 minutes on 2 cores. OUT.gguf is never overwritten.
set -euo pipefail
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: bash scripts/llama_cpp.sh MODEL_DIR OUT.gguf [f32|bf16|f16]" >&2
  exit 2
fi
model=$1 out=$2 outtype=${3:-f32}
case $outtype in f32 | bf16 | f16) ;; *)
  echo "dtype '$outtype' is not allowed; choose one of f32, bf16, f16" >&2
  exit 2
  ;;
esac
[ -f "$model/config.json" ] || { echo "$model: no config.json (not a model folder)" >&2; exit 2; }
[ -e "$out" ] && { echo "$out exists: not overwriting it" >&2; exit 2; }
version=0.3.36
src=${XDG_CACHE_HOME:-$HOME/.cache}/rrt/llama-cpp-python-$version
if [ ! -d "$src" ]; then
  tmp=$(mktemp -d)
  python -m pip download -q --no-deps --no-binary :all: -d "$tmp" "llama-cpp-python==$version"
  mkdir -p "$(dirname "$src")"
  tar xzf "$tmp/llama_cpp_python-$version.tar.gz" -C "$tmp"
  mv "$tmp/llama_cpp_python-$version" "$src"
  rm -rf "$tmp"
fi
if ! python -c "import llama_cpp" 2>/dev/null; then
  echo "building llama.cpp (llama-cpp-python $version)" >&2
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) python -m pip install -q "$src"
fi
python -m pip install -q sentencepiece # the converter imports it for Llama's vocabulary
converter=$src/vendor/llama.cpp
PYTHONPATH=$converter/gguf-py python "$converter/convert_hf_to_gguf.py" "$model" \
  --outtype "$outtype" --outfile "$out"
