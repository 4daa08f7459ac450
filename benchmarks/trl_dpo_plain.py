"""A plain trl DPO script, as a user writes one: JSONL pairs in, LoRA adapter out. The trl side of
`speed_whole_process.py`; the settings mirror the prefopt command there (LoRA r=16 alpha=32 on every linear layer,
AdamW at a constant lr, clipping 1.0, beta 0.1, sigmoid loss, no evaluation, no checkpoints, fp32 or bf16).
Everything else is trl's default, including gradient checkpointing, which DPOConfig turns on
(`--no-gradient-checkpointing` turns it off).

    python benchmarks/trl_dpo_plain.py --data pairs.jsonl --out /tmp/trl_run --steps 10 --batch-size 4 --max-length 256
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="local model folder")
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--max-length", type=int, required=True)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--no-gradient-checkpointing", action="store_true", help="off, instead of trl's default on")
    args = parser.parse_args()

    started = time.perf_counter()
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    dataset = load_dataset("json", data_files=args.data, split="train")
    config = DPOConfig(
        output_dir=args.out, per_device_train_batch_size=args.batch_size, max_steps=args.steps,
        max_length=args.max_length, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=0.0, max_grad_norm=1.0, optim="adamw_torch", beta=0.1, loss_type=["sigmoid"], bf16=args.bf16,
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to=[], disable_tqdm=True, seed=0,
        use_cpu=not torch.cuda.is_available(),
        **({"gradient_checkpointing": False} if args.no_gradient_checkpointing else {}),
    )  # fmt: skip
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config)  # fmt: skip
    train_started = time.perf_counter()
    metrics = trainer.train().metrics
    train_seconds = time.perf_counter() - train_started
    trainer.save_model(args.out)
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    Path(args.out, "speed.json").write_text(json.dumps({
        "seconds_to_train_start": train_started - started, "train_seconds": train_seconds,
        "train_runtime": metrics.get("train_runtime"), "losses": losses,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
