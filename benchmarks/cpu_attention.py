"""prefopt's DPO step on a CPU with its own SDPA (`prefopt.core.attention`) against transformers' SDPA.

The two alternate pass by pass over the same batches in one process (`alternating.py`). In bf16 (the default)
prefopt's runs attention in float32 below 256 keys and passes grouped key/value heads unrepeated; in fp32
(`--precision fp32`) only the latter differs.

    python benchmarks/cpu_attention.py --batch-size 4 --max-length 128 --batches 5
    python benchmarks/cpu_attention.py --precision fp32 --batch-size 8 --max-length 128 --passes 3
    python benchmarks/cpu_attention.py --batch-size 8 --max-length 256 --batches 3 --out results/speed/cpu_attention/b8_len256
    python benchmarks/cpu_attention.py --skip-step --gqa-kernel 8,217,9,3 16,120,9,3 2,308,32,8
    python benchmarks/cpu_attention.py --skip-step --span-kernel 4 8 16

`--kernel B,T ...` also times the attention call alone: forward + backward of SDPA with a causal boolean mask
(as a shared-prompt batch has), 9 heads of 64, bf16 inputs against the same inputs upcast to float32, median of
`--kernel-reps`. `--gqa-kernel B,T,H,KV ...` times SDPA with H query heads over KV key/value heads, the key and value
repeated into H heads (transformers' path when a mask is given) against passed as they are (`enable_gqa`, the path
`prefopt.core.attention` takes on a CPU), in float32 and bf16. `--span-kernel G ...` times one layer's attention
of G shared-prompt pair groups packed into one sequence: moved into padded rows under the groups' mask, as packed
tokens were once attended, against `SpanAttention`'s calls, bf16 and float32 inputs.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from functools import partial
from pathlib import Path

import torch
from alternating import add_step_arguments, time_settings
from report import finish
from speed_vs_trl import Setup, batch_order, build_prefopt, load_pairs

from prefopt.core.attention import CPU_SDPA
from prefopt.io import provenance

KERNELS = {"transformers": "sdpa", "prefopt": CPU_SDPA}


def kernel_ms(batch: int, length: int, dtype: torch.dtype, reps: int) -> float:
    """Median ms of one SDPA forward + backward, (batch, 9 heads, length, 64), causal boolean mask."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, 9, length, 64, generator=g).to(dtype).requires_grad_() for _ in range(3))
    mask = torch.ones(length, length, dtype=torch.bool).tril().expand(batch, 1, length, length).contiguous()
    grad = torch.randn(batch, 9, length, 64, generator=g).to(dtype)
    times = []
    for i in range(reps + 2):  # the first two untimed
        started = time.perf_counter()
        torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).backward(grad)
        if i >= 2:
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def gqa_kernel_ms(batch: int, length: int, heads: int, kv_heads: int, dtype: torch.dtype, grouped: bool,
                  reps: int) -> float:
    """Median ms of one SDPA forward + backward, (batch, heads, length, 64) queries over kv_heads key/value heads,
    causal boolean mask; the key/value heads repeated to `heads` first unless `grouped`."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(batch, heads, length, 64, generator=g).to(dtype).requires_grad_()
    k, v = (torch.randn(batch, kv_heads, length, 64, generator=g).to(dtype).requires_grad_() for _ in range(2))
    mask = torch.ones(length, length, dtype=torch.bool).tril().expand(batch, 1, length, length).contiguous()
    grad = torch.randn(batch, heads, length, 64, generator=g).to(dtype)
    n = heads // kv_heads
    times = []
    for i in range(reps + 2):  # the first two untimed
        started = time.perf_counter()
        if grouped:
            out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        else:
            k2, v2 = (t.repeat_interleave(n, dim=1) for t in (k, v))
            out = torch.nn.functional.scaled_dot_product_attention(q, k2, v2, attn_mask=mask)
        out.backward(grad)
        if i >= 2:
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def span_kernel_ms(groups: int, dtype: torch.dtype, reps: int, seed: int = 0) -> dict:
    """Median ms of one layer's attention, forward + backward, of `groups` shared-prompt pair groups ([prompt
    20-128, chosen 10-128, rejected 10-128 tokens], drawn from `seed`), 9 query heads over 3, packed (1, S)
    tokens through sdpa_on_cpu: scattered into the (G, T') rows under the groups' mask and gathered back (the
    padded rows) against SpanAttention's calls."""
    from prefopt.core.attention import SPAN_ATTENTION, SpanAttention, sdpa_on_cpu

    rng = torch.Generator().manual_seed(seed)
    shapes = [[int(torch.randint(low, 129, (), generator=rng)) for low in (20, 10, 10)] for _ in range(groups)]
    width = max(sum(shape) for shape in shapes)  # T'
    allowed = torch.zeros(groups, 1, width, width, dtype=torch.bool)  # (G, 1, T', T')
    real = []
    for g, (p, c, r) in enumerate(shapes):
        n = p + c + r
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        causal[p + c :, p : p + c] = False  # the rejected reply does not see the chosen one
        allowed[g, 0, :n, :n] = causal
        allowed[g, 0, n:, :p] = True  # a padding query sees its prompt: no empty softmax row
        real.append(torch.arange(n) + g * width)
    real = torch.cat(real)  # (S,) flat index into (G * T')
    spans = SpanAttention.shared_prompt([(p, [c, r]) for p, c, r in shapes])

    class Attention(torch.nn.Module):
        is_causal, num_key_value_groups = True, 3

    def pad(t):  # (1, heads, S, D) -> (G, heads, T', D)
        tokens = t[0].transpose(0, 1)  # (S, heads, D)
        cells = tokens.new_zeros(groups * width, *tokens.shape[1:]).index_copy(0, real, tokens)
        return cells.view(groups, width, *tokens.shape[1:]).transpose(1, 2)

    def padded_rows(q, k, v):
        out, _ = sdpa_on_cpu(Attention(), pad(q), pad(k), pad(v), allowed)  # (G, T', heads, D)
        return out.flatten(0, 1).index_select(0, real)  # (S, heads, D)

    def span_calls(q, k, v):
        return sdpa_on_cpu(Attention(), q, k, v, None, **{SPAN_ATTENTION: spans})[0][0]  # (S, heads, D)

    tokens = len(real)
    q = torch.randn(1, 9, tokens, 64, generator=rng).to(dtype).requires_grad_()
    k, v = (torch.randn(1, 3, tokens, 64, generator=rng).to(dtype).requires_grad_() for _ in range(2))
    grad = torch.randn(tokens, 9, 64, generator=rng).to(dtype)
    with torch.no_grad():
        difference = (padded_rows(q, k, v).float() - span_calls(q, k, v).float()).abs().max().item()
    # bf16: rows of 256 keys or more attend in bf16, the spans (fewer keys each) in float32; a wrong mask is off by O(1)
    if difference > (1e-5 if dtype == torch.float32 else 5e-2):
        raise RuntimeError(f"span attention differs from the padded rows' by {difference:.1e}")
    times = {"padded_rows": [], "span_calls": []}
    for i in range(reps + 2):  # the first two untimed; the two alternate
        for name, attend in (("padded_rows", padded_rows), ("span_calls", span_calls)):
            started = time.perf_counter()
            attend(q, k, v).backward(grad)
            if i >= 2:
                times[name].append(time.perf_counter() - started)
    return {"groups": groups, "tokens": tokens, "rows_width": width, "shapes": shapes, "max_difference": difference,
            **{f"{name}_ms": 1000 * statistics.median(t) for name, t in times.items()}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_step_arguments(parser)
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16", help="the training steps'")
    parser.add_argument("--kernel", nargs="*", default=[], help="B,T shapes to time the attention call alone at")
    parser.add_argument("--kernel-reps", type=int, default=10)
    parser.add_argument("--gqa-kernel", nargs="*", default=[], help="B,T,H,KV shapes to time grouped heads at")
    parser.add_argument("--span-kernel", nargs="*", type=int, default=[],
                        help="numbers of shared-prompt pair groups to time span attention at")
    parser.add_argument("--skip-step", action="store_true", help="kernel timings only, no training steps")
    parser.add_argument("--out", default=None, help="folder for cpu_attention.{json,md} (default: print only)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

    setup = Setup(model=args.model, batch_size=args.batch_size, max_length=args.max_length,
                  max_prompt_length=args.max_length // 2, precision=args.precision, device="cpu", lengths="spread")
    seconds: dict = {name: [] for name in KERNELS}
    if not args.skip_step:
        tokenizer, pairs, _ = load_pairs(setup)
        batches = batch_order(pairs, setup, args.batches)
        with tempfile.TemporaryDirectory() as tmp:
            trainer = build_prefopt(setup, tokenizer, pairs, [i for b in batches for i in b], Path(tmp))
            config = trainer.model.get_base_model().config
            if config._attn_implementation != CPU_SDPA:
                raise SystemExit(f"{args.model} does not run SDPA here ('{config._attn_implementation}')")
            settings = {name: partial(setattr, config, "_attn_implementation", kernel)
                        for name, kernel in KERNELS.items()}
            seconds = time_settings(trainer, batches, settings, args.passes)

    kernels = []
    for shape in args.kernel:
        batch, length = (int(x) for x in shape.split(","))
        kernels.append({"batch": batch, "length": length,
                        "bf16_ms": kernel_ms(batch, length, torch.bfloat16, args.kernel_reps),
                        "float32_ms": kernel_ms(batch, length, torch.float32, args.kernel_reps)})
        print(kernels[-1], flush=True)
    grouped = []
    for shape in args.gqa_kernel:
        batch, length, heads, kv_heads = (int(x) for x in shape.split(","))
        row = {"batch": batch, "length": length, "heads": heads, "kv_heads": kv_heads}
        for name, dtype in (("float32", torch.float32), ("bf16", torch.bfloat16)):
            for how, flag in (("repeated", False), ("grouped", True)):
                row[f"{name}_{how}_ms"] = gqa_kernel_ms(batch, length, heads, kv_heads, dtype, flag, args.kernel_reps)
        grouped.append(row)
        print(row, flush=True)
    span = []
    for groups in args.span_kernel:
        for name, dtype in (("float32", torch.float32), ("bf16", torch.bfloat16)):
            span.append({"dtype": name, **span_kernel_ms(groups, dtype, args.kernel_reps)})
            print({k: v for k, v in span[-1].items() if k != "shapes"}, flush=True)
    totals = {k: [sum(t) for t in v] for k, v in seconds.items()}
    result = {"setup": vars(setup), "passes": 0 if args.skip_step else args.passes, "seconds": seconds,
              "totals": totals, "kernels": kernels, "grouped_kernels": grouped, "span_kernels": span,
              "command": shlex.join(["python", "benchmarks/cpu_attention.py", *(argv or sys.argv[1:])]),
              "provenance": provenance()}
    lines = [(f"# SDPA on a CPU: prefopt's vs transformers', float32 vs bf16, grouped heads ({args.model}, batch "
              f"{args.batch_size}, max length {args.max_length}, spread lengths, {args.precision})"), ""]
    if not args.skip_step:
        lines += ["| pass | transformers' SDPA s (sum over the batches) | prefopt's SDPA s | ratio |",
                  "| ---: | ---: | ---: | ---: |"]
        lines += [f"| {p} | {a:.2f} | {b:.2f} | {a / b:.2f}x |" for p, (a, b) in
                  enumerate(zip(totals["transformers"], totals["prefopt"]))]  # fmt: skip
    if kernels:
        lines += ["", ("The attention call alone (forward + backward, 9 heads of 64, causal boolean mask, median of "
                  f"{args.kernel_reps}):"), "", "| batch | length | bf16 ms | float32 ms | bf16 / float32 |",
                  "| ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {k['batch']} | {k['length']} | {k['bf16_ms']:.1f} | {k['float32_ms']:.1f} | "
                  f"{k['bf16_ms'] / k['float32_ms']:.2f}x |" for k in kernels]
    if grouped:
        lines += ["", ("Grouped-query attention alone (forward + backward, heads of 64, causal boolean mask, median of "
                  f"{args.kernel_reps}): key/value heads repeated per query head vs passed as they are:"), "",
                  ("| batch | length | heads / kv heads | float32 repeated ms | float32 grouped ms | bf16 repeated ms "
                  "| bf16 grouped ms |"), "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        lines += [f"| {g['batch']} | {g['length']} | {g['heads']} / {g['kv_heads']} | {g['float32_repeated_ms']:.1f} | "
                  f"{g['float32_grouped_ms']:.1f} | {g['bf16_repeated_ms']:.1f} | {g['bf16_grouped_ms']:.1f} |"
                  for g in grouped]
    if span:
        lines += ["", ("Shared-prompt pair groups' attention alone (one layer, forward + backward, 9 heads over 3, "
                  f"median of {args.kernel_reps}): packed tokens scattered into padded rows under the groups' mask "
                  "vs attended span by span (SpanAttention):"), "",
                  "| groups | tokens | rows x width | inputs | padded rows ms | span calls ms | rows / spans |",
                  "| ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
        lines += [f"| {r['groups']} | {r['tokens']} | {r['groups']} x {r['rows_width']} | {r['dtype']} | "
                  f"{r['padded_rows_ms']:.1f} | {r['span_calls_ms']:.1f} | "
                  f"{r['padded_rows_ms'] / r['span_calls_ms']:.2f}x |" for r in span]
    finish(result, lines, args.out, "cpu_attention")
    return 0


if __name__ == "__main__":
    sys.exit(main())
