#!/usr/bin/env bash
# The GPU check -> results/gpu.md and results/gpu.json: scripts/bench.py at the harness size gpu
# (adv_jax/bench/harness.py; docs/scale.md).
#   scripts/gpu_check.sh --fetch-wheels   with a network, beforehand: wheels/ holds what the GPU
#                                         image lacks (hydra-core, omegaconf, antlr4, joblib launcher)
#   scripts/gpu_check.sh                  on the GPU machine, offline: installs wheels/ if needed,
#                                         then measures, in at most 8 minutes
#   scripts/gpu_check.sh --cpu-short OUT  the same code at the size tiny on a CPU, writing OUT (a test)
# MNIST: $ADV_JAX_MNIST_DIR, else data/mnist carried beside the code, else ../shared/data/mnist.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=wheels
NEEDED=(hydra-core==1.3.8 omegaconf==2.3.1 antlr4-python3-runtime==4.9.3 hydra-joblib-launcher==1.2.0 joblib cloudpickle PyYAML packaging)
SIZE=gpu
OUT=results/gpu.md
case "${1:-}" in
  --fetch-wheels)
    # antlr4-python3-runtime 4.9.3 (omegaconf's pin) is a source archive on PyPI: build its wheel here.
    pip wheel --no-deps -w "$WHEELS" antlr4-python3-runtime==4.9.3
    pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
      --no-deps -d "$WHEELS" "${NEEDED[@]:0:2}" "${NEEDED[@]:3}"
    exit 0 ;;
  --cpu-short)
    SIZE=tiny
    OUT=${2:?usage: scripts/gpu_check.sh --cpu-short OUT.md}
    export JAX_PLATFORMS=cpu ;;
  "")
    python -c "import hydra, omegaconf, hydra_plugins.hydra_joblib_launcher" 2>/dev/null \
      || pip install --no-index --find-links "$WHEELS" "${NEEDED[@]}" ;;
  *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
esac
if [[ -z "${ADV_JAX_MNIST_DIR:-}" ]]; then
  if [[ -d data/mnist ]]; then ADV_JAX_MNIST_DIR=$PWD/data/mnist; else ADV_JAX_MNIST_DIR=$PWD/../shared/data/mnist; fi
fi
# Two processes share the device in the sweep section: no preallocation of 75% per process.
export ADV_JAX_MNIST_DIR PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TQDM_DISABLE=1 XLA_PYTHON_CLIENT_PREALLOCATE=false WANDB_MODE=disabled
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
if [[ $SIZE == tiny ]]; then
  # CPU-short: compilation dominates at tiny sizes; a persistent cache lets the sweep's and the
  # study's processes reuse programs compiled earlier (the GPU check measures without one). The
  # test suite's own cache, where it runs inside one.
  export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$WORK/jax_cache}" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
fi
timeout 480 python scripts/bench.py --size "$SIZE" --out "$OUT"
