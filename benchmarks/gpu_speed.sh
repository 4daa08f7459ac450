#!/usr/bin/env bash
# The GPU speed runs: prefopt's DPO vs trl's DPOTrainer, and vs trl with use_liger_kernel=True, at batch 4 and
# 16 pairs (max length 512, lengths spread like chat data), on a 135M and a 1B-class model; then the CUDA
# timeline of one batch-4 step of each (benchmarks/dispatch_counts.py --device cuda), both trainers with
# batch widths padded to multiples of 64, and prefopt with each pair's prompt run once.
#
#   benchmarks/gpu_speed.sh MODEL_135M MODEL_1B OUT_DIR [SECONDS]
#
# MODEL_*: model folders, e.g. made by benchmarks/random_init_model.py (same architecture, random weights):
#   python benchmarks/random_init_model.py smollm2-135m-instruct /tmp/smollm2-random
#   python benchmarks/random_init_model.py benchmarks/configs/llama-3.2-1b /tmp/llama-1b --tokenizer /tmp/smollm2-random
# On a machine without a package registry, benchmarks/gpu_pack.sh packs what this needs. The Liger rows need
# the liger-kernel package. Runs go in order of importance; SECONDS (default 3600) is a
# budget for all of them: a run that cannot get 40 s of it is skipped and named. Each run's log is
# OUT_DIR/NAME.log, its results OUT_DIR/NAME/.
set -u
small=$1
large=$2
out=$3
budget=${4:-3600}
deadline=$(( $(date +%s) + budget ))
mkdir -p "$out"
status=0

run() {  # NAME LIMIT_S SCRIPT ARGS...
  local name=$1 limit=$2 script=$3
  shift 3
  local left=$(( deadline - $(date +%s) ))
  (( left < limit )) && limit=$left
  if (( limit < 40 )); then
    echo "SKIPPED $name: ${left} s of the budget left"
    status=1
    return
  fi
  local started
  started=$(date +%s)
  echo "+ $name: python3 benchmarks/$script $* --out $out/$name"
  if timeout "$limit" python3 "benchmarks/$script" "$@" --out "$out/$name" > "$out/$name.log" 2>&1; then
    grep -E "^\| (prefopt|trl|GPU|host|aten)|^prefopt / trl|^Loss check" "$out/$name.log"
  else
    echo "FAILED $name (exit $?)"
    tail -5 "$out/$name.log"
    status=1
  fi
  echo "  $name: $(( $(date +%s) - started )) s"
}

# 4 reps: each trainer goes first in two (the second meets shapes the process has met, cheaper on a GPU)
spread=(--lengths spread --max-length 512 --reps 4)
run 135m_b4 120 speed_vs_trl.py --model "$small" --batch-size 4 "${spread[@]}"
run 135m_b4_liger 120 speed_vs_trl.py --model "$small" --batch-size 4 "${spread[@]}" --trl-liger
run 135m_b16 120 speed_vs_trl.py --model "$small" --batch-size 16 "${spread[@]}"
run 135m_b16_liger 120 speed_vs_trl.py --model "$small" --batch-size 16 "${spread[@]}" --trl-liger
run 1b_b4 150 speed_vs_trl.py --model "$large" --batch-size 4 "${spread[@]}"
run 1b_b16 150 speed_vs_trl.py --model "$large" --batch-size 16 "${spread[@]}"
run 1b_b4_liger 150 speed_vs_trl.py --model "$large" --batch-size 4 "${spread[@]}" --trl-liger
run 1b_b16_liger 150 speed_vs_trl.py --model "$large" --batch-size 16 "${spread[@]}" --trl-liger
run 135m_b4_timeline 100 dispatch_counts.py --model "$small" --device cuda --batch-size 4 --max-length 512 \
  --lengths spread --warmup 3 --steps 5 --top 15
run 1b_b4_multiple64 150 speed_vs_trl.py --model "$large" --batch-size 4 "${spread[@]}" --pad-to-multiple-of 64
run 1b_b16_share_prompt 150 speed_vs_trl.py --model "$large" --batch-size 16 "${spread[@]}" --share-prompt true
exit $status
