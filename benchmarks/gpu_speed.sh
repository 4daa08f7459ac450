#!/usr/bin/env bash
# The GPU speed runs: prefopt DPO vs trl DPOTrainer at two sizes and both reference modes, and generation.
#   benchmarks/gpu_speed.sh MODEL OUT_DIR
# MODEL: a model folder or name (benchmarks/random_init_model.py makes a same-architecture random one).
set -u
model=$1
out=$2
mkdir -p "$out"
status=0
run() { echo "+ $*"; "$@" || status=1; }
run python3 benchmarks/speed_vs_trl.py --model "$model" --out "$out/dpo_b4_len256"
run python3 benchmarks/speed_vs_trl.py --model "$model" --reference precomputed --out "$out/dpo_b4_len256_precomputed"
run python3 benchmarks/speed_vs_trl.py --model "$model" --batch-size 16 --max-length 512 --pad-to 512 --out "$out/dpo_b16_pad512"
run python3 benchmarks/generation_speed.py --model "$model" --batch-sizes 8,32 --lora --out "$out/generation"
exit $status
