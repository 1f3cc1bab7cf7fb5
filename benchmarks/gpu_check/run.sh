#!/usr/bin/env bash
# The GPU proof on a lent GPU machine: install what its image lacks from the carried wheels, then run every check.
# Usage: benchmarks/gpu_check/run.sh --install-only      (first device call, carrying benchmarks/gpu_check/carry-1)
#        benchmarks/gpu_check/run.sh OUT                 (second call, carrying carry-2: installs it, then checks)
# Wheels go in without their dependencies (prepare.sh carried those), skipping what the machine has already.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=benchmarks/gpu_check
for wheel in "$here"/carry-*/wheels/*.whl; do
    [ -e "$wheel" ] || continue
    name=$(basename "$wheel" | cut -d- -f1)
    python -c "import importlib.metadata as m; m.version('$name')" 2>/dev/null \
        || python -m pip install --quiet --no-deps --no-index "$wheel"
done
[ "${1:-}" = "--install-only" ] && { echo "installed what carry-1 holds; now run with carry-2"; exit 0; }
out=${1:?usage: benchmarks/gpu_check/run.sh --install-only | OUT}
python -m pip install --quiet --no-deps --no-build-isolation --no-index -e .
BERT_VOCAB_DIR="$PWD/$here/carry-1/bert-vocab" python -m benchmarks.gpu_check --out "$out" --workdir "$out/work"
