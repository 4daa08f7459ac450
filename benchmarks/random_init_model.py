"""A randomly initialised model of the same architecture (and tokenizer) as a given model.

For throughput measurements on a machine the real weights cannot reach: speed and
memory depend on the architecture and the sequence lengths, not on the weights.
(Losses and generated text do not carry over; generation runs to max_new_tokens.)

    python benchmarks/random_init_model.py smollm2-135m-instruct /tmp/smollm2-random
    python benchmarks/random_init_model.py FOLDER_WITH_CONFIG_AND_TOKENIZER /tmp/smollm2-random --seed 0

The source may be a folder holding only config.json and the tokenizer files.
"""

from __future__ import annotations

import argparse
import sys

import torch


def random_init_model(source: str, out: str, seed: int = 0) -> int:
    """Save a random-weight copy of `source`'s architecture and its tokenizer to `out`; returns the parameter count."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from prefopt.models import resolve_model

    folder = resolve_model(source)
    config = AutoConfig.from_pretrained(folder)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder).save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="bundled name, hub id or folder with config.json + tokenizer")
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n = random_init_model(args.source, args.out, args.seed)
    print(f"wrote {args.out}: {n / 1e6:.1f}M parameters, random init (seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
