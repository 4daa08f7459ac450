#!/usr/bin/env bash
# The GPU speed runs: prefopt DPO vs trl DPOTrainer (and trl + Liger kernels) at batch 4 and 16, both reference
# modes, on a 135M model and a 1B-class one, and generation.
#   benchmarks/gpu_speed.sh MODEL OUT_DIR [MODEL_1B]
# MODEL: a model folder or name (benchmarks/random_init_model.py makes a same-architecture random one);
# MODEL_1B: e.g. made by `python benchmarks/random_init_model.py benchmarks/configs/llama-3.2-1b /tmp/llama-1b
# --tokenizer smollm2-135m-instruct`. The Liger rows need the liger-kernel wheel installed (they fail alone without).
set -u
model=$1
out=$2
model_1b=${3:-}
mkdir -p "$out"
status=0
run() { echo "+ $*"; "$@" || status=1; }
run python3 benchmarks/speed_vs_trl.py --model "$model" --out "$out/dpo_b4_len256"
run python3 benchmarks/speed_vs_trl.py --model "$model" --reference precomputed --out "$out/dpo_b4_len256_precomputed"
run python3 benchmarks/speed_vs_trl.py --model "$model" --batch-size 16 --max-length 512 --pad-to 512 --out "$out/dpo_b16_pad512"
run python3 benchmarks/speed_vs_trl.py --model "$model" --trl-liger --out "$out/dpo_b4_len256_liger"
run python3 benchmarks/speed_vs_trl.py --model "$model" --trl-liger --batch-size 16 --max-length 512 --lengths spread --out "$out/dpo_b16_len512_liger"
if [ -n "$model_1b" ]; then
  run python3 benchmarks/speed_vs_trl.py --model "$model_1b" --batch-size 4 --lengths spread --out "$out/1b_dpo_b4_len256"
  run python3 benchmarks/speed_vs_trl.py --model "$model_1b" --batch-size 16 --lengths spread --out "$out/1b_dpo_b16_len256"
  run python3 benchmarks/speed_vs_trl.py --model "$model_1b" --trl-liger --batch-size 4 --lengths spread --out "$out/1b_dpo_b4_len256_liger"
  run python3 benchmarks/speed_vs_trl.py --model "$model_1b" --trl-liger --batch-size 16 --lengths spread --out "$out/1b_dpo_b16_len256_liger"
fi
run python3 benchmarks/generation_speed.py --model "$model" --batch-sizes 8,32 --lora --out "$out/generation"
exit $status
