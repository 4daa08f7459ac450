#!/usr/bin/env bash
# Pack what benchmarks/gpu_speed.sh needs on a GPU machine that reaches no package registry, as it was packed for
# results/speed/h200_grid: wheels for the Python 3.12 there (trl and its missing dependencies, the transformers and
# peft versions this repository pins, liger-kernel, and prefopt itself built from this checkout) into .whl/, and
# the 135M model's config and tokenizer (no weights: gpu_speed.sh's models are random-init) into .gpu/.
#   benchmarks/gpu_pack.sh            # then, on the machine, from the repository root:
#   pip install --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
#   python3 benchmarks/random_init_model.py .gpu/smollm2 /tmp/smollm2-random
#   python3 benchmarks/random_init_model.py benchmarks/configs/llama-3.2-1b /tmp/llama-1b --tokenizer /tmp/smollm2-random
#   bash benchmarks/gpu_speed.sh /tmp/smollm2-random /tmp/llama-1b /tmp/gpu 480
# About 17 MB in all. Both folders are for .git/info/exclude (this script adds them).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
for ignored in /.whl/ /.gpu/; do
  grep -qxF "$ignored" .git/info/exclude 2>/dev/null || echo "$ignored" >> .git/info/exclude
done
rm -rf .whl .gpu
mkdir -p .whl .gpu/smollm2
version() { "$python" -c "from importlib.metadata import version; print(version('$1'))"; }
for package in trl transformers peft datasets dill multiprocess; do
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$package==$(version "$package")"
done
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl liger-kernel
"$python" -m pip wheel -q --no-deps --no-build-isolation -w .whl .
model=$("$python" -c "from prefopt.core.models import resolve_model; print(resolve_model('smollm2-135m-instruct'))")
for f in config.json generation_config.json tokenizer.json tokenizer_config.json chat_template.jinja; do
  if [ -f "$model/$f" ]; then cp "$model/$f" .gpu/smollm2/; fi
done
git rev-parse HEAD > .gpu/COMMIT
du -sh .whl .gpu
