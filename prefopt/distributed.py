"""Data-parallel training over several processes, launched by Accelerate (or torchrun).

``prefopt run --num-processes N ...`` re-launches itself through Accelerate's
launcher as ``accelerate launch --multi_gpu --num_processes N -m prefopt run
...``, which users may also type themselves (``--multi_gpu`` selects
Accelerate's torchrun launcher, which starts N processes on CPU too; its
``--cpu`` flag alone starts one process unless run under mpirun, and prefopt
warns about that). On a machine with several GPUs plain ``accelerate launch
--num_processes N`` picks it already. Accelerate's ``PartialState`` then joins
the processes into one group: nccl on GPUs (one GPU each), gloo on CPU.

**The rule: N processes change the speed, never the result.** Every process
draws the same global batch of ``batch_size * grad_accum`` pair ids (the same
``batch_stream`` as one process), takes its contiguous share of it, and runs
that share in micro-batches of at most ``batch_size``. Each micro-batch's summed
loss is divided by the *global* batch size (as in one process), and the
gradients are summed across processes (not averaged) after the last micro-batch,
so every process holds the gradient one process would have: clipping, AdamW and
the scheduler then do the same update everywhere. Logged metrics are the sums of
all processes divided by the global batch; held-out evaluation splits its
batches across processes and puts the results back in order. A run therefore
matches a one-process run of the same configuration (bit for bit when each
process's share is exactly the micro-batches one process would run, e.g.
``batch_size=4 grad_accum=2`` on 2 processes; up to float rounding otherwise),
except for dropout masks, which are drawn per process.

Gradients are all-reduced by hand rather than through a DistributedDataParallel
wrapper: one reduction per optimizer step whatever the number of micro-batches
or forwards per micro-batch (KTO's second forward, the reference with adapters
disabled), no unused-parameter bookkeeping, and the policy stays the plain
model that the reference, evaluation and saving already use. FSDP and DeepSpeed
(``accelerate config``) shard the model and are refused with a one-line error.

Only process 0 writes (config.yaml, metrics.jsonl, checkpoints, outputs,
summary.json) and shows progress bars. Every check that can reject the input
runs in :meth:`Context.agree` blocks: if any process raises a
:class:`PrefoptError` there, all of them raise it together (and only process 0
prints it), so no process is left waiting for the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

import torch

from prefopt.errors import PrefoptError

_WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_BUCKET_NUMEL = 1 << 25  # gradient elements all-reduced at once (128 MB of float32)


class AgreedError(PrefoptError):
    """A PrefoptError that every process raised at the same point; only process 0 reports it."""


def launched_world_size() -> int:
    """Processes in this launch according to the launcher's environment (1 when not launched)."""
    for name in _WORLD_SIZE_VARS:
        value = os.environ.get(name, "")
        if value.isdigit():
            return int(value)
    return 1


class Context:
    """One process of a run: its rank, the number of processes and the collectives the loop needs.

    With one process every method is a no-op or an identity and nothing of
    torch.distributed is touched.
    """

    def __init__(self, rank: int = 0, world: int = 1, device: torch.device | None = None):
        self.rank, self.world, self.device = rank, world, device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    # ------------------------------------------------------------- sharing work

    def shard(self, items: list) -> list:
        """This process's contiguous share of `items` (shares differ in size by at most one)."""
        if self.world == 1:
            return items
        n = len(items)
        return items[self.rank * n // self.world : (self.rank + 1) * n // self.world]

    def mine(self, index: int) -> bool:
        """Whether the `index`-th of a list of equal jobs (evaluation batches) is this process's."""
        return index % self.world == self.rank

    # ------------------------------------------------------------- collectives

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def gather(self, obj: Any) -> list:
        """`obj` of every process, in rank order (any picklable object)."""
        if self.world == 1:
            return [obj]
        out: list = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Process 0's `obj`, on every process."""
        if self.world == 1:
            return obj
        box = [obj if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_parameters(self, params: list[torch.Tensor]) -> None:
        """Copy process 0's values into `params` everywhere (the same start, whatever each process initialised)."""
        if self.world == 1:
            return
        with torch.no_grad():
            for p in params:
                torch.distributed.broadcast(p.data, src=0)

    def sum_gradients(self, params: list[torch.Tensor]) -> None:
        """Replace each gradient by its sum over processes.

        A parameter that got no gradient anywhere keeps ``grad=None`` (AdamW
        then skips it, as in one process); one that got a gradient on some
        process only counts as zero elsewhere.
        """
        if self.world == 1:
            return
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=self.device)
        torch.distributed.all_reduce(has, op=torch.distributed.ReduceOp.MAX)
        active = [p for p, h in zip(params, has.tolist()) if h]
        for p in active:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        groups: dict[tuple, list[torch.Tensor]] = {}
        for p in active:
            groups.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
        for grads in groups.values():
            start = 0
            while start < len(grads):  # buckets of about _BUCKET_NUMEL elements
                stop, numel = start, 0
                while stop < len(grads) and (stop == start or numel + grads[stop].numel() <= _BUCKET_NUMEL):
                    numel += grads[stop].numel()
                    stop += 1
                bucket = grads[start:stop]
                flat = torch.cat([g.reshape(-1) for g in bucket])
                torch.distributed.all_reduce(flat)
                offset = 0
                for g in bucket:
                    g.copy_(flat[offset : offset + g.numel()].view_as(g))
                    offset += g.numel()
                start = stop

    def sum_metrics(self, sums: dict[str, float], tokens: int) -> tuple[dict[str, float], int]:
        """Per-process metric sums and token counts -> totals over processes (added in rank order)."""
        if self.world == 1:
            return sums, tokens
        total: dict[str, float] = {}
        count = 0
        for part, part_tokens in self.gather((dict(sums), tokens)):
            for key, value in part.items():
                total[key] = total.get(key, 0.0) + value
            count += part_tokens
        return total, count

    def collect(self, results: dict[int, Any]) -> list:
        """Per-job results {job index: result} of every process -> all results in job order."""
        if self.world == 1:
            return [results[k] for k in sorted(results)]
        merged: dict[int, Any] = {}
        for part in self.gather(results):
            merged.update(part)
        return [merged[k] for k in sorted(merged)]

    @contextlib.contextmanager
    def agree(self) -> Iterator[None]:
        """A block that fails on every process if it fails on one (a PrefoptError, first process's message).

        The block must not use collectives itself. Its end is a synchronisation
        point: no process leaves it before every process has finished it.
        """
        if self.world == 1:
            yield
            return
        error = None
        try:
            yield
        except PrefoptError as exc:
            error = str(exc)
        failed = [e for e in self.gather(error) if e is not None]
        if failed:
            raise AgreedError(failed[0])

    def shutdown(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


_context: Context | None = None


def context() -> Context:
    """This process's Context; the first call in a launched process joins the process group."""
    global _context
    if _context is None:
        _context = _join() if launched_world_size() > 1 else Context(device=None)
        if not _context.distributed and _asked_for_more_than_one():
            print("prefopt: warning: accelerate launch started one process (on CPU it needs --multi_gpu, or mpirun "
                  "with --cpu); use `accelerate launch --multi_gpu --num_processes N` or `prefopt run "
                  "--num-processes N`", file=sys.stderr)
    return _context


def _asked_for_more_than_one() -> bool:
    """accelerate's single-process launcher sets MASTER_ADDR only when more than one process was asked for."""
    return "ACCELERATE_USE_CPU" in os.environ and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ


def _join() -> Context:
    for flag, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"),
                       ("ACCELERATE_USE_MEGATRON_LM", "Megatron-LM")):
        if os.environ.get(flag, "false").lower() in ("1", "true"):
            raise PrefoptError(f"{name} is not supported: prefopt trains data-parallel (every process holds the "
                               "whole model); choose multi-GPU/multi-CPU in `accelerate config`")
    from accelerate import PartialState

    cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true")
    state = PartialState(cpu=cpu)
    if state.num_processes < 2:
        return Context(device=None)
    if state.process_index != 0:  # one set of progress bars (model loading, saving): process 0's
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return Context(rank=state.process_index, world=state.num_processes, device=torch.device(state.device))


def report_error(exc: PrefoptError) -> None:
    """Print `exc` as the one-line error. An error every process agreed on is printed by process 0
    only, and no process returns before it is printed (a launcher stops the others when one exits)."""
    agreed = isinstance(exc, AgreedError) and _context is not None and _context.distributed
    if not agreed or _context.is_main:
        print(f"prefopt: error: {exc}", file=sys.stderr, flush=True)
    if agreed:
        _context.barrier()


def shutdown() -> None:
    """Leave the process group (if this process joined one) and forget the Context."""
    global _context
    if _context is not None:
        _context.shutdown()
    _context = None


# ---------------------------------------------------------------- launching


def strip_flag(argv: list[str], flag: str) -> list[str]:
    """`argv` without `flag VALUE` / `flag=VALUE`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def launch(num_processes: int, argv: list[str]) -> int:
    """Run ``python -m prefopt ARGV`` in `num_processes` processes through ``accelerate launch``; their exit status.

    Multi-GPU (nccl) when CUDA is available, else multi-CPU (gloo); a free
    port is picked. The workers print their own output and errors; this
    process adds nothing but the exit status.
    """
    if launched_world_size() > 1:
        raise PrefoptError("--num-processes inside a launched run; give one or the other")
    if num_processes < 1:
        raise PrefoptError(f"--num-processes must be at least 1, got {num_processes}")
    if torch.cuda.is_available() and num_processes > torch.cuda.device_count():
        raise PrefoptError(f"--num-processes {num_processes}: only {torch.cuda.device_count()} GPU(s)")
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = launch_command_parser().parse_args([
        "--multi_gpu", "--num_processes", str(num_processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        "--module", "prefopt", *argv,
    ])
    quiet = ("torch.distributed.elastic", "accelerate")
    levels = {name: logging.getLogger(name).level for name in quiet}
    for name in quiet:  # the workers report errors themselves, in one line
        logging.getLogger(name).setLevel(logging.CRITICAL)
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS",)}  # torchrun sets it in this process too
    try:
        launch_command(args)
    except ChildFailedError as exc:
        codes = [f.exitcode for f in exc.failures.values() if f.exitcode and f.exitcode > 0]
        return codes[0] if codes else 1
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return 0
