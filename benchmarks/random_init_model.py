"""A randomly initialised model of the same architecture (and tokenizer) as a given model.

For throughput measurements on a machine the real weights cannot reach: speed and
memory depend on the architecture and the sequence lengths, not on the weights.
(Losses and generated text do not carry over; generation runs to max_new_tokens.)

    python benchmarks/random_init_model.py smollm2-135m-instruct /tmp/smollm2-random
    python benchmarks/random_init_model.py FOLDER_WITH_CONFIG_AND_TOKENIZER /tmp/smollm2-random --seed 0

The source may be a folder holding only config.json and the tokenizer files, or only config.json with
`--tokenizer` naming a model whose tokenizer to use (`benchmarks/configs/`, 1B-class shapes):

    python benchmarks/random_init_model.py benchmarks/configs/llama-3.2-1b /tmp/llama-1b --tokenizer smollm2-135m-instruct

`--set key=value` changes the architecture (JSON values), e.g. a model of the
same depth and vocabulary whose layers are so narrow that a training step on
a CPU costs little but the framework's own per-operation work:

    python benchmarks/random_init_model.py smollm2-135m-instruct /tmp/narrow \
        --set hidden_size=64 --set intermediate_size=128 --set num_attention_heads=4 \
        --set num_key_value_heads=1 --set head_dim=16
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def random_init_model(source: str, out: str, seed: int = 0, changes: dict | None = None,
                      tokenizer: str | None = None) -> int:
    """Save a random-weight copy of `source`'s architecture (with `changes` to its config) and its tokenizer (or
    `tokenizer`'s, whose vocabulary must fit the model's) to `out`; returns the parameter count."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from prefopt.core.models import resolve_model

    folder = resolve_model(source)
    config = AutoConfig.from_pretrained(folder)
    for key, value in (changes or {}).items():
        if not hasattr(config, key):
            raise SystemExit(f"random_init_model: {type(config).__name__} has no field {key!r}")
        setattr(config, key, value)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(resolve_model(tokenizer) if tokenizer else folder)
    if len(tok) > config.vocab_size:
        raise SystemExit(f"random_init_model: the tokenizer has {len(tok)} tokens, the model {config.vocab_size}")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="bundled name, hub id or folder with config.json + tokenizer")
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tokenizer", default=None, help="take the tokenizer from this model (default: source's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a config field (value parsed as JSON); repeatable")
    args = parser.parse_args(argv)
    changes = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected KEY=VALUE")
        try:
            changes[key] = json.loads(value)
        except json.JSONDecodeError:
            changes[key] = value
    n = random_init_model(args.source, args.out, args.seed, changes, args.tokenizer)
    print(f"wrote {args.out}: {n / 1e6:.1f}M parameters, random init (seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
