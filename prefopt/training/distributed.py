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
model that the reference, evaluation and saving already use.

**FSDP** (``accelerate config`` / ``accelerate launch --use_fsdp``, or ``prefopt
run --num-processes N --fsdp``): each process keeps a shard of every parameter
(PyTorch's FSDP2 ``fully_shard``, one unit per transformer layer plus the
rest), gathering a layer's weights only while it runs (or, with accelerate's
``fsdp_reshard_after_forward`` false, from its forward to its backward; see
fsdp_reshard_after_forward for the settings read). The same rule holds:
FSDP averages gradients over processes, and the loss is multiplied by the
number of processes first, so the sharded gradients are the one-process sums
that clipping and AdamW see. A sharded forward is a collective, so
every process runs every evaluation batch, each process's share of a global
batch must be the same size, and process 0 saves the final model from a
gathered full state dict. The reference is built before sharding (adapter
mode then runs the sharded policy with adapters disabled; a frozen copy is
sharded like the policy). Checkpoints hold whole tensors, gathered when saved
and cut into shards when resumed (prefopt.training.checkpoint), so a checkpoint of a
sharded run resumes in one process and the other way round. DeepSpeed
(ZeRO) and Megatron-LM are refused with a one-line error: FSDP2 covers
ZeRO-3's sharding of parameters, gradients and optimizer states.

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

    def __init__(self, rank: int = 0, world: int = 1, device: torch.device | None = None, sharded: bool = False,
                 reshard_after_forward: bool = True):
        self.rank, self.world, self.device = rank, world, device
        self.sharded = sharded and world > 1  # FSDP: parameters sharded across the processes
        # FSDP: free a layer's gathered weights after its forward (gather again for the backward), or keep them
        self.reshard_after_forward = reshard_after_forward

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
        """Whether the `index`-th of a list of equal jobs (evaluation batches) is this process's.
        Sharded: every job is every process's (each forward gathers weights from all of them)."""
        return self.sharded or index % self.world == self.rank

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

    # ------------------------------------------------------------- FSDP

    def shard_model(self, model) -> None:
        """Shard `model` in place (FSDP2): one unit per transformer layer, then the rest (see loss_scale)."""
        if not self.sharded:
            return
        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError as exc:
            raise PrefoptError(f"FSDP needs torch >= 2.6 (FSDP2's fully_shard); this is torch {torch.__version__}") \
                from exc

        hf = model.lm if hasattr(model, "lm") and hasattr(model, "head") else model  # under a scalar head
        hf = hf.get_base_model() if hasattr(hf, "get_base_model") else hf
        layer_classes = set(getattr(hf, "_no_split_modules", None) or ())
        layers = [m for m in model.modules() if type(m).__name__ in layer_classes]
        if not layers:
            raise PrefoptError(f"FSDP: no transformer layers found in {type(hf).__name__} "
                               "(its _no_split_modules names none of its modules)")
        for layer in layers:
            fully_shard(layer, reshard_after_forward=self.reshard_after_forward)
        fully_shard(model)

    @property
    def loss_scale(self) -> float:
        """Factor on the loss before backward. FSDP averages gradients over the processes (a plain sum would
        need PREMUL_SUM, which gloo lacks); scaling the loss by the process count makes that average the sum."""
        return float(self.world) if self.sharded else 1.0

    def full_state_dict(self, model) -> dict[str, torch.Tensor]:
        """Every parameter and buffer of a sharded `model`, whole, on the CPU of process 0 (empty elsewhere).
        A collective: every process calls it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

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
    for flag, name in (("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_MEGATRON_LM", "Megatron-LM")):
        if _env_true(flag):
            raise PrefoptError(f"{name} is not supported: prefopt trains data-parallel, or sharded with FSDP (the "
                               "sharding of ZeRO-3); choose multi-GPU/multi-CPU or FSDP in `accelerate config`")
    sharded = _env_true("ACCELERATE_USE_FSDP")
    reshard_after_forward = fsdp_reshard_after_forward() if sharded else True  # refuses what it cannot honour
    from accelerate import PartialState

    cpu = not torch.cuda.is_available() or _env_true("ACCELERATE_USE_CPU")
    state = PartialState(cpu=cpu)
    if state.num_processes < 2:
        return Context(device=None)
    if state.process_index != 0:  # one set of progress bars (model loading, saving): process 0's
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    return Context(rank=state.process_index, world=state.num_processes, device=torch.device(state.device),
                   sharded=sharded, reshard_after_forward=reshard_after_forward)


# accelerate's FSDP1 sharding strategies, by name or by the enum value a config may hold
_STRATEGIES = {"1": "FULL_SHARD", "2": "SHARD_GRAD_OP", "3": "NO_SHARD", "4": "HYBRID_SHARD", "5": "HYBRID_SHARD_ZERO2"}


def fsdp_reshard_after_forward() -> bool:
    """Read accelerate's FSDP settings (set by `accelerate launch --use_fsdp` or `accelerate config`).

    Returns whether each layer's gathered weights are freed after its forward
    (``fsdp_reshard_after_forward``: true, the default, like FULL_SHARD; false, like
    SHARD_GRAD_OP: faster, more memory). Settings prefopt cannot honour raise a
    one-line error; the rest (wrapping policy, state-dict type, prefetching,
    RAM-efficient loading, module-state sync, version 1 or 2) are prefopt's own
    choices: FSDP2, one unit per decoder layer, weights equal on every process
    before sharding, whole tensors in checkpoints and the final save.
    """
    env = os.environ
    strategy = env.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").upper()
    strategy = _STRATEGIES.get(strategy, strategy)
    if strategy == "NO_SHARD":
        raise PrefoptError("FSDP with sharding strategy NO_SHARD is data-parallel training: launch with --multi_gpu "
                           "(or `prefopt run --num-processes N` without --fsdp)")
    if strategy not in ("FULL_SHARD", "SHARD_GRAD_OP"):
        raise PrefoptError(f"FSDP sharding strategy {strategy} is not supported (FULL_SHARD or SHARD_GRAD_OP)")
    if _env_true("FSDP_OFFLOAD_PARAMS"):
        raise PrefoptError("FSDP parameter offloading (fsdp_offload_params) is not supported; set it to false")
    if _env_true("FSDP_ACTIVATION_CHECKPOINTING"):
        raise PrefoptError("fsdp_activation_checkpointing is not read by prefopt: set it to false and pass "
                           "gradient_checkpointing=true")
    reshard = env.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower()
    if reshard not in ("true", "false", "full_shard", "shard_grad_op", "1", "2"):
        raise PrefoptError(f"FSDP_RESHARD_AFTER_FORWARD={reshard!r}: expected true or false")
    return strategy == "FULL_SHARD" and reshard in ("true", "full_shard", "1")


def _env_true(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true")


def report_error(exc: PrefoptError) -> None:
    """Print `exc` as the one-line error. An error every process agreed on is printed by process 0
    only, and no process returns before it is printed (a launcher stops the others when one exits)."""
    agreed = isinstance(exc, AgreedError) and _context is not None and _context.distributed
    # before joining: an error of the launch itself (its settings, the command line), the same in every process
    before_joining = _context is None and launched_world_size() > 1 and os.environ.get("RANK", "0") != "0"
    if (not agreed or _context.is_main) and not before_joining:
        print(f"prefopt: error: {exc}", file=sys.stderr, flush=True)
    if agreed:
        _context.barrier()


def shutdown() -> None:
    """Leave the process group (if this process joined one) and forget the Context."""
    global _context, _left_group
    if _context is not None:
        _left_group = _left_group or _context.distributed
        _context.shutdown()
    _context = None


_left_group = False


def end_worker(code: int) -> None:
    """End a process that was part of a process group now, with exit status `code`, skipping Python's finalization.

    Why: gloo runs collectives on its own threads, and a thread drops its last
    reference to a finished collective (and the tensors it holds) only after the
    waiting main thread has been woken. Dropping a tensor takes the GIL; if the
    interpreter is finalizing by then, the thread is made to exit mid-C++ frame and
    the process aborts ("terminate called without an active exception", SIGABRT)
    after all its work is done. Every file is written and closed by now; only the
    standard streams need flushing. Returns (does nothing) in a process that joined no group.
    """
    if not _left_group:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


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


def launch(num_processes: int, argv: list[str], fsdp: bool = False) -> int:
    """Run ``python -m prefopt ARGV`` in `num_processes` processes through ``accelerate launch``; their exit status.

    Multi-GPU (nccl) when CUDA is available, else multi-CPU (gloo); with `fsdp`,
    sharded (FSDP2); a free port is picked. The workers print their own output and errors; this
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
        *(["--use_fsdp", "--fsdp_version", "2"] if fsdp else ["--multi_gpu"]),  # FSDP has its own launcher mode
        "--num_processes", str(num_processes), "--num_machines", "1",
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
