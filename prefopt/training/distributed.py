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
:class:`PrefoptError` there, all of them raise it together, so no process is
left waiting for the others.

**Errors reach the user once.** ``prefopt run --num-processes N`` refuses
before starting any process what its processes would refuse (the settings of
the environment and accelerate config they would get: DeepSpeed, Megatron-LM,
FSDP offloading, ...; see :func:`check_launch`). An error found in the
processes is left in a folder the launcher made (:func:`report_error`); the
launcher prints the first one once they have all ended and exits with status 2
(a torch elastic launcher stops the other processes as soon as one exits, so
a process cannot count on printing it later). Under ``accelerate launch`` the
first process of the launch to fail prints (a counter in the launch's store).

**Stopping the launcher stops its processes.** SIGINT, SIGTERM or SIGHUP to
``prefopt run --num-processes N`` stops every process it started (SIGTERM,
then SIGKILL after a grace period), and every launched process stops itself
when its launcher is gone (killed with SIGKILL, say). Neither writes a
summary.json: the run is left as an interrupted run, resumable from its
checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from prefopt.errors import PrefoptError

_WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
_BUCKET_NUMEL = 1 << 25  # gradient elements all-reduced at once (128 MB of float32)
# Set by `prefopt run --num-processes` for the processes it starts: the folder where they leave their error
# line for it to print, and its pid (a process whose launcher is gone stops)
LAUNCH_DIR_VAR, LAUNCHER_PID_VAR = "PREFOPT_LAUNCH_DIR", "PREFOPT_LAUNCHER_PID"


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
        fully_shard = _fully_shard()
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


def _fully_shard():
    """FSDP2's fully_shard; a one-line error on a torch without it."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError as exc:
        raise PrefoptError(f"FSDP needs torch >= 2.6 (FSDP2's fully_shard); this is torch {torch.__version__}") \
            from exc
    return fully_shard


_context: Context | None = None


def context() -> Context:
    """This process's Context; the first call in a launched process joins the process group."""
    global _context
    if _context is None:
        if launched_world_size() > 1:
            _watch_launcher()
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
    sharded, reshard_after_forward = launch_settings()  # refuses what it cannot honour
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


def launch_settings(env: Mapping[str, str] | None = None) -> tuple[bool, bool]:
    """What a launched process makes of its launcher's settings (`env`, default this process's environment):
    whether it is sharded (FSDP) and, if so, whether layers reshard after their forward.

    Raises the one-line PrefoptError of each setting prefopt refuses (DeepSpeed, Megatron-LM, the FSDP settings
    of fsdp_reshard_after_forward). A launched process calls it when it joins its group; ``prefopt run
    --num-processes`` calls it on the environment it is about to give its processes (check_launch).
    """
    env = os.environ if env is None else env
    for flag, name in (("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_MEGATRON_LM", "Megatron-LM")):
        if _env_true(flag, env):
            raise PrefoptError(f"{name} is not supported: prefopt trains data-parallel, or sharded with FSDP (the "
                               "sharding of ZeRO-3); choose multi-GPU/multi-CPU or FSDP in `accelerate config`")
    sharded = _env_true("ACCELERATE_USE_FSDP", env)
    return sharded, (fsdp_reshard_after_forward(env) if sharded else True)


# accelerate's FSDP1 sharding strategies, by name or by the enum value a config may hold
_STRATEGIES = {"1": "FULL_SHARD", "2": "SHARD_GRAD_OP", "3": "NO_SHARD", "4": "HYBRID_SHARD", "5": "HYBRID_SHARD_ZERO2"}


def fsdp_reshard_after_forward(env: Mapping[str, str] | None = None) -> bool:
    """Read accelerate's FSDP settings (set by `accelerate launch --use_fsdp` or `accelerate config`).

    Returns whether each layer's gathered weights are freed after its forward
    (``fsdp_reshard_after_forward``: true, the default, like FULL_SHARD; false, like
    SHARD_GRAD_OP: faster, more memory). Settings prefopt cannot honour raise a
    one-line error; the rest (wrapping policy, state-dict type, prefetching,
    RAM-efficient loading, module-state sync, version 1 or 2) are prefopt's own
    choices: FSDP2, one unit per decoder layer, weights equal on every process
    before sharding, whole tensors in checkpoints and the final save. `env`:
    the launched process's environment (default this process's).
    """
    env = os.environ if env is None else env
    strategy = env.get("FSDP_SHARDING_STRATEGY", "FULL_SHARD").upper()
    strategy = _STRATEGIES.get(strategy, strategy)
    if strategy == "NO_SHARD":
        raise PrefoptError("FSDP with sharding strategy NO_SHARD is data-parallel training: launch with --multi_gpu "
                           "(or `prefopt run --num-processes N` without --fsdp)")
    if strategy not in ("FULL_SHARD", "SHARD_GRAD_OP"):
        raise PrefoptError(f"FSDP sharding strategy {strategy} is not supported (FULL_SHARD or SHARD_GRAD_OP)")
    if _env_true("FSDP_OFFLOAD_PARAMS", env):
        raise PrefoptError("FSDP parameter offloading (fsdp_offload_params) is not supported; set it to false")
    if _env_true("FSDP_ACTIVATION_CHECKPOINTING", env):
        raise PrefoptError("fsdp_activation_checkpointing is not read by prefopt: set it to false and pass "
                           "gradient_checkpointing=true")
    reshard = env.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower()
    if reshard not in ("true", "false", "full_shard", "shard_grad_op", "1", "2"):
        raise PrefoptError(f"FSDP_RESHARD_AFTER_FORWARD={reshard!r}: expected true or false")
    return strategy == "FULL_SHARD" and reshard in ("true", "full_shard", "1")


def _env_true(name: str, env: Mapping[str, str] | None = None) -> bool:
    return (os.environ if env is None else env).get(name, "false").lower() in ("1", "true")


def report_error(exc: PrefoptError) -> None:
    """Print `exc` as the one-line error, once per launch whichever processes raise it.

    A launched process does not print it itself when its launcher is ``prefopt run --num-processes``: it leaves
    it in the launcher's folder (LAUNCH_DIR_VAR) and the launcher prints it once all its processes have ended.
    Under another launcher, an error every process agreed on is printed by process 0, and no process returns
    before it is printed (a launcher stops the others when one exits); any other error (one raised before the
    processes joined, every process raising it) is printed by the first process of the launch to report one.
    """
    line = f"prefopt: error: {exc}"
    if launched_world_size() < 2:
        print(line, file=sys.stderr, flush=True)
        return
    folder = os.environ.get(LAUNCH_DIR_VAR)
    if folder and _leave_for_launcher(Path(folder), str(exc)):
        return
    if isinstance(exc, AgreedError) and _context is not None and _context.distributed:
        if _context.is_main:
            print(line, file=sys.stderr, flush=True)
        _context.barrier()
        return
    _print_once(line)


def _leave_for_launcher(folder: Path, message: str) -> bool:
    """Write `message` to error-RANK in `folder`, whole or not at all; whether it was written."""
    rank = os.environ.get("RANK", str(os.getpid()))
    temp = folder / f".error-{rank}.tmp"
    try:
        temp.write_text(message)
        os.replace(temp, folder / f"error-{rank}")
    except OSError:
        return False
    return True


def first_left_error(folder: Path) -> str | None:
    """The error message the launched processes left in `folder` first (None if none)."""
    found = []
    for path in Path(folder).glob("error-*"):
        with contextlib.suppress(OSError):
            found.append((path.stat().st_mtime_ns, path.name, path.read_text()))
    return min(found)[2] if found else None


_PRINTED_WAIT_S = 10.0


def _print_once(line: str) -> None:
    """Print `line` if this is the first process of its launch to report an error.

    The first is told by a counter in the torch elastic launch's store (every process of the launch, on every
    machine, reaches it); the others wait until it has printed (a launcher stops every process when one exits,
    so a process that returned first could cost the line). Without that store (another launcher, or the store
    unreachable) each process that joined its group prints its own error; before joining (an error of the
    launch's settings, the same in every process) only process 0 does.
    """
    store, key = _launch_store()
    if store is None:
        if _context is not None or os.environ.get("RANK", "0") == "0":  # before joining: the same everywhere
            print(line, file=sys.stderr, flush=True)
        return
    with contextlib.suppress(Exception):  # the store or the first process is gone: print rather than lose it
        if store.add(key, 1) > 1:
            store.wait([key + "/printed"], timedelta(seconds=_PRINTED_WAIT_S))
            return
    print(line, file=sys.stderr, flush=True)
    with contextlib.suppress(Exception):
        store.set(key + "/printed", "1")


def _launch_store():
    """A client of the torch elastic agent's store of this launch, and this attempt's error key; (None, None)
    when not launched by torch elastic or the store cannot be reached."""
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() != "true" or not env.get("MASTER_PORT", "").isdigit():
        return None, None
    try:
        store = torch.distributed.TCPStore(env.get("MASTER_ADDR", "127.0.0.1"), int(env["MASTER_PORT"]),
                                           is_master=False, timeout=timedelta(seconds=_PRINTED_WAIT_S))
    except Exception:  # noqa: BLE001
        return None, None
    return store, f"prefopt/error/{env.get('TORCHELASTIC_RESTART_COUNT', '0')}"


_WATCH_PERIOD_S = 0.2
_watching = False


def _watch_launcher() -> None:
    """Stop this launched process (at once, like SIGKILL) when the process that launched it is gone.

    A launcher killed with SIGKILL cannot stop its processes, and torch elastic starts each in a session of its
    own, out of reach of a terminal's Ctrl-C; without this they would train on and write a finished run. A
    thread checks the parent every 0.2 s: when the parent is gone the process is re-parented. Under ``prefopt
    run --num-processes``, a launcher that died before the watch began is noticed too (LAUNCHER_PID_VAR).
    """
    global _watching
    if _watching:
        return
    _watching = True
    parent = os.getppid()
    launcher = os.environ.get(LAUNCHER_PID_VAR, "")
    if launcher.isdigit() and not _alive(int(launcher)):
        _launcher_gone()

    def watch() -> None:
        while True:
            time.sleep(_WATCH_PERIOD_S)
            if os.getppid() != parent:
                _launcher_gone()

    threading.Thread(target=watch, name="prefopt-launcher-watch", daemon=True).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, another user's
        return True
    return True


def _launcher_gone() -> None:
    with contextlib.suppress(OSError):
        os.write(2, f"prefopt: process {os.getpid()}: its launcher is gone; stopping\n".encode())
    os._exit(1)


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


def _accelerate_args(num_processes: int, fsdp: bool, argv: list[str]) -> list[str]:
    return [
        *(["--use_fsdp", "--fsdp_version", "2"] if fsdp else ["--multi_gpu"]),  # FSDP has its own launcher mode
        "--num_processes", str(num_processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        "--module", "prefopt", *argv,
    ]


@contextlib.contextmanager
def _quiet_launcher() -> Iterator[None]:
    """torch elastic's and accelerate's logs off (the processes report their errors themselves, in one line),
    and the OMP_NUM_THREADS that torchrun sets in this process too put back afterwards."""
    quiet = ("torch.distributed.elastic", "accelerate")
    levels = {name: logging.getLogger(name).level for name in quiet}
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS",)}
    for name in quiet:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        _restore_env(saved)


def _restore_env(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _worker_environment(num_processes: int, fsdp: bool) -> dict[str, str] | None:
    """The accelerate settings the launched processes will get (this environment, accelerate's config file,
    the launch flags), as accelerate computes them; None if this accelerate cannot tell."""
    try:
        from accelerate.commands.launch import _validate_launch_command, launch_command_parser
        from accelerate.utils.launch import prepare_multi_gpu_env
    except ImportError:
        return None
    args = launch_command_parser().parse_args(_accelerate_args(num_processes, fsdp, []))
    with _quiet_launcher():
        validated = _validate_launch_command(args)  # (args, config defaults, ...) in accelerate 1.x
        return dict(prepare_multi_gpu_env(validated[0] if isinstance(validated, tuple) else validated))


def check_launch(num_processes: int, fsdp: bool = False, global_batch: int | None = None) -> None:
    """Refuse, before any process is started, what `num_processes` launched processes would refuse.

    The settings they would get (environment, accelerate config file, `fsdp`) go through launch_settings, as
    in each process (DeepSpeed, Megatron-LM, FSDP offloading, NO_SHARD/HYBRID strategies, activation
    checkpointing, ...); sharded, the torch must have FSDP2 and `global_batch` (batch_size x grad_accum, when
    given) must split evenly. What only the processes can see (data, model) is theirs to refuse; launch()
    prints it once.
    """
    if launched_world_size() > 1:
        raise PrefoptError("--num-processes inside a launched run; give one or the other")
    if num_processes < 1:
        raise PrefoptError(f"--num-processes must be at least 1, got {num_processes}")
    if torch.cuda.is_available() and num_processes > torch.cuda.device_count():
        raise PrefoptError(f"--num-processes {num_processes}: only {torch.cuda.device_count()} GPU(s)")
    env = _worker_environment(num_processes, fsdp)
    if env is None:
        return
    sharded, _ = launch_settings(env)
    if sharded:
        _fully_shard()
        if global_batch is not None:
            check_even_shares(global_batch, num_processes)  # the check each process makes too


def check_even_shares(global_batch: int, world: int) -> None:
    """What FSDP needs: the same number of forwards on every process (each one is a collective)."""
    if global_batch % world:
        raise PrefoptError(f"FSDP: batch_size x grad_accum = {global_batch} must be divisible by the {world} "
                           "processes (every process runs the same number of forwards)")


_STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")
_GRACE_S = 5.0  # after a stop signal: SIGTERM the processes, SIGKILL those left after this long


def launch(num_processes: int, argv: list[str], fsdp: bool = False, global_batch: int | None = None) -> int:
    """Run ``python -m prefopt ARGV`` in `num_processes` processes through ``accelerate launch``; the status.

    Multi-GPU (nccl) when CUDA is available, else multi-CPU (gloo); with `fsdp`, sharded (FSDP2); a free port
    is picked. check_launch refuses first what the processes would. The processes print their own output;
    an error one of them reports (report_error) is printed here, once, after they have all ended (status 2).
    SIGINT, SIGTERM or SIGHUP to this process stops them all (status 128 + the signal's number); each of them
    also stops by itself if this process dies (_watch_launcher).
    """
    check_launch(num_processes, fsdp, global_batch)
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = launch_command_parser().parse_args(_accelerate_args(num_processes, fsdp, argv))
    outcome: dict[str, Any] = {}

    def run() -> None:  # in a thread: torch elastic then leaves this process's signal handlers alone
        try:
            launch_command(args)
            outcome["code"] = 0
        except ChildFailedError as exc:
            codes = [f.exitcode for f in exc.failures.values() if f.exitcode and f.exitcode > 0]
            outcome["code"] = codes[0] if codes else 1
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread
            outcome["error"] = exc

    folder = tempfile.mkdtemp(prefix="prefopt-launch-")
    saved = {k: os.environ.get(k) for k in (LAUNCH_DIR_VAR, LAUNCHER_PID_VAR)}
    os.environ.update({LAUNCH_DIR_VAR: folder, LAUNCHER_PID_VAR: str(os.getpid())})
    stopped: list[int] = []  # the stop signal received, if any
    try:
        with _quiet_launcher(), _on_stop_signals(stopped):
            thread = threading.Thread(target=run, name="prefopt-launch", daemon=True)
            thread.start()
            _wait(thread, stopped)
        error = first_left_error(Path(folder))
    finally:
        _restore_env(saved)
        shutil.rmtree(folder, ignore_errors=True)
    if stopped:
        with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
            print(f"prefopt: interrupted ({signal.Signals(stopped[0]).name}): stopped the {num_processes} "
                  "processes", file=sys.stderr, flush=True)
        return 128 + stopped[0]
    if error is not None:
        print(f"prefopt: error: {error}", file=sys.stderr, flush=True)
        return 2
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("code", 1)


@contextlib.contextmanager
def _on_stop_signals(stopped: list[int]) -> Iterator[None]:
    """While in the block: a stop signal is recorded in `stopped` and SIGTERMs this process's children (the
    launched processes). Outside the main thread (no handlers can be set) it does nothing."""
    def handler(signum, frame) -> None:
        if not stopped:
            stopped.append(signum)
        _signal_children(signal.SIGTERM)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for name in _STOP_SIGNALS:
            sig = getattr(signal, name, None)
            if sig is not None:
                previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _wait(thread: threading.Thread, stopped: list[int]) -> None:
    """Wait for the launch `thread`; once a stop signal came, keep stopping the children (any started after
    it too): SIGTERM, SIGKILL after _GRACE_S, and give up on a launch thread still running after twice that."""
    since = None
    while thread.is_alive():
        thread.join(0.1)
        if stopped:
            since = since if since is not None else time.monotonic()
            waited = time.monotonic() - since
            if waited > 2 * _GRACE_S:
                return
            _signal_children(signal.SIGTERM if waited < _GRACE_S else signal.SIGKILL)


def _signal_children(sig: int) -> None:
    """Send `sig` to every process this one started, and to the process group each launched process leads
    (torch elastic starts each in a session of its own)."""
    try:
        import psutil
    except ImportError:  # accelerate depends on psutil; without it the processes stop by themselves
        return
    me = os.getpid()
    try:
        children = psutil.Process(me).children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        with contextlib.suppress(psutil.Error, OSError):
            if child.ppid() == me and os.getpgid(child.pid) == child.pid:
                os.killpg(child.pid, sig)
            else:
                child.send_signal(sig)
