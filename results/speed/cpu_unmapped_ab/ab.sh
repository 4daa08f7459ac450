#!/usr/bin/env bash
for i in 1 2 3; do
  if (( i % 2 )); then order="old new"; else order="new old"; fi
  for v in $order; do
    out=/tmp/ab_runs/$v$i; rm -rf $out
    (cd /tmp/ab_$v && PYTHONPATH=/tmp/ab_$v /usr/bin/time -f "$v $i wall %e s maxrss %M KB" /work/main/.venv/bin/python -m prefopt run --algo dpo --model /tmp/llama-1b --data /tmp/mem/pairs.jsonl --output-dir $out steps=8 batch_size=2 max_length=256 max_prompt_length=128 precision=bf16 eval_size=0 progress=false warmup_ratio=0 schedule=constant lora_r=16 lora_alpha=32 lora_dropout=0 seed=0 2>&1 | grep -E 'wall|trained')
  done
done
