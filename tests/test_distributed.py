"""Data-parallel training in real processes (gloo on CPU), launched as a user would, against one process."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import interrupt_on_call, read_metrics, run_cli, tiny_run_args, write_learnable_pairs
from safetensors.torch import load_file
from torch.testing import assert_close

from prefopt.errors import PrefoptError
from prefopt.training.distributed import Context, strip_flag

ROOT = Path(__file__).resolve().parents[1]
# what a launcher leaves behind; none of it may reach the next launch
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
               "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS")


@pytest.fixture
def pairs(tmp_path):
    return write_learnable_pairs(tmp_path / "pairs.jsonl")


def _env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in LAUNCH_VARS and not k.startswith(("ACCELERATE_", "TORCHELASTIC_", "PET_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _run(cmd: list, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """`cmd` in a clean launch environment plus `env`."""
    cwd.mkdir(exist_ok=True)
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env={**_env(), **env}, capture_output=True, text=True,
                          timeout=600, check=False)


def _hook(folder: Path, source: str, monkeypatch) -> None:
    """`source` imported by every Python process the test starts next (folder/sitecustomize.py first on
    PYTHONPATH; _env() adds the source folder)."""
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(source)
    monkeypatch.setenv("PYTHONPATH", str(folder))


def _accelerate_launch(*args, fsdp: bool = False, fsdp_flags: tuple = ()) -> list:
    # `accelerate launch` (the console script's module); --multi_gpu is its torchrun launcher, on CPU too:
    # its --cpu mode starts one process unless run under mpirun. Port 0: a free one.
    return [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch",
            *(["--use_fsdp", "--fsdp_version", "2", *fsdp_flags] if fsdp else ["--multi_gpu"]), "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
            "-m", "prefopt", *args]


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _assert_same_run(one: Path, two: Path, atol: float, processes: tuple = (1, 2)) -> None:
    assert _files(one) == _files(two)
    rows1, rows2 = read_metrics(one), read_metrics(two)
    assert len(rows1) == len(rows2)
    for r1, r2 in zip(rows1, rows2):
        assert r1.keys() == r2.keys()
        for key in r1:
            if key != "seconds":
                assert r2[key] == pytest.approx(r1[key], abs=atol), (r1["step"], key)
    w1 = load_file(one / "adapter" / "adapter_model.safetensors")
    w2 = load_file(two / "adapter" / "adapter_model.safetensors")
    assert w1.keys() == w2.keys()
    for key in w1:
        assert_close(w2[key], w1[key], rtol=0, atol=atol)
    s1, s2 = (json.loads((run / "summary.json").read_text()) for run in (one, two))
    assert (s1["num_processes"], s2["num_processes"]) == processes
    assert s1["eval_after"] == pytest.approx(s2["eval_after"], abs=atol)


@pytest.mark.multiprocess
def test_accelerate_launch_two_processes_matches_one(tiny_model_dir, pairs, tmp_path):
    """Each process runs exactly one of the micro-batches one process would run: the same numbers."""
    common = ("steps=4", "lr=1e-2", "grad_accum=2", "eval_every=2", "save_every=2")  # batch_size=4: 2 x 4 = 8
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli(tiny_run_args(tiny_model_dir, pairs, one, *common)) == 0
    work = tmp_path / "work"
    done = _run(_accelerate_launch(*tiny_run_args(tiny_model_dir, pairs, two, *common)), work)
    assert done.returncode == 0, done.stderr[-3000:]

    _assert_same_run(one, two, atol=1e-5)
    train_steps = [r["step"] for r in read_metrics(two) if "loss" in r]
    assert train_steps == [1, 2, 3, 4]  # one row per step: process 1 logged nothing
    assert done.stdout.count("run folder:") == 1  # one summary, printed by process 0
    assert list(work.iterdir()) == []  # nothing written beside the run folder
    assert not (two / "checkpoints").exists()


@pytest.mark.multiprocess
def test_num_processes_flag_precomputed_reference(tiny_model_dir, pairs, tmp_path, monkeypatch):
    """`--num-processes 2` re-launches through accelerate; the reference cache is written once, by process 0.

    Each process accumulates two micro-batches of 2 (one process: four), so the gradients are the same
    sums added in another order.
    """
    home = tmp_path / "home"
    monkeypatch.setenv("PREFOPT_HOME", str(home))
    common = ("steps=3", "lr=1e-2", "batch_size=2", "grad_accum=4", "reference=precomputed")
    one, two = tmp_path / "one", tmp_path / "two"
    done = _run([sys.executable, "-m", "prefopt", *tiny_run_args(tiny_model_dir, pairs, two, *common),
                 "--num-processes", "2"], tmp_path / "work")
    assert done.returncode == 0, done.stderr[-3000:]
    cache = list((home / "reference").iterdir())
    assert len(cache) == 1 and cache[0].suffix == ".pt"  # one file, no temp files left by a second writer

    assert run_cli(tiny_run_args(tiny_model_dir, pairs, one, *common)) == 0  # loads that cache
    _assert_same_run(one, two, atol=1e-5)
    assert json.loads((two / "summary.json").read_text())["reference"] == "precomputed"


@pytest.mark.multiprocess
def test_resume_in_two_processes(tiny_model_dir, pairs, tmp_path, monkeypatch):
    """A one-process run interrupted after its step-2 checkpoint, resumed in two processes: the uninterrupted run."""
    from prefopt.training import offline as train_module

    common = ("steps=4", "save_every=2", "lr=5e-3", "grad_accum=2")
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert run_cli(tiny_run_args(tiny_model_dir, pairs, straight, *common)) == 0
    undo = interrupt_on_call(monkeypatch, train_module.Trainer, "train_step", 3)
    assert run_cli(tiny_run_args(tiny_model_dir, pairs, broken, *common)) == 130
    undo()

    done = _run(_accelerate_launch("run", "--resume", broken), tmp_path / "work")
    assert done.returncode == 0, done.stderr[-3000:]
    a = load_file(straight / "adapter" / "adapter_model.safetensors")
    b = load_file(broken / "adapter" / "adapter_model.safetensors")
    # the same sums of the same micro-batch gradients, to float32 rounding: each of the two processes has one
    # core, and PyTorch's CPU attention kernel rounds some short lengths at the tiny model's head size (8)
    # differently on one thread than on two (1e-7; none at head size 64); a resume that lost or repeated a step
    # would be off by orders of magnitude more
    for key in a:
        assert_close(b[key], a[key], rtol=1e-5, atol=1e-7)

    rows, resumed = read_metrics(straight), read_metrics(broken)
    assert [r.keys() for r in resumed] == [r.keys() for r in rows]
    for r1, r2 in zip(rows, resumed, strict=True):
        assert {k: pytest.approx(v, rel=1e-5, abs=1e-6) for k, v in r1.items() if k != "seconds"} == {
            k: v for k, v in r2.items() if k != "seconds"}, r1["step"]


@pytest.mark.multiprocess
def test_bad_input_fails_once_on_every_process(tiny_model_dir, tmp_path):
    """A check that fails on both processes gives one line and exit status 2, and writes nothing."""
    out = tmp_path / "run"
    done = _run([sys.executable, "-m", "prefopt", *tiny_run_args(tiny_model_dir, tmp_path / "missing.jsonl", out),
                 "--num-processes", "2"], tmp_path / "work")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("prefopt: error: ") and "missing.jsonl" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert not out.exists()


# Imported by every Python process the test starts: a launched process (RANK set) leaves its pid in a folder.
STARTED_HOOK = """
import os
from pathlib import Path

if "RANK" in os.environ:
    (Path(os.environ["PREFOPT_TEST_STARTED"]) / str(os.getpid())).touch()
"""

FSDP_OFFLOAD_CONFIG = """\
compute_environment: LOCAL_MACHINE
distributed_type: FSDP
fsdp_config:
  fsdp_offload_params: true
  fsdp_version: 2
mixed_precision: 'no'
num_machines: 1
num_processes: 2
"""


@pytest.mark.multiprocess
@pytest.mark.parametrize(("flags", "setting", "expected"), [
    (("--fsdp",), "accelerate config: fsdp_offload_params true",
     "FSDP parameter offloading (fsdp_offload_params) is not supported; set it to false"),
    ((), "ACCELERATE_USE_DEEPSPEED=true", "DeepSpeed is not supported: prefopt trains data-parallel"),
])
def test_num_processes_refuses_what_its_processes_would_before_starting_them(tiny_model_dir, pairs, tmp_path,
                                                                             monkeypatch, flags, setting, expected):
    """A setting the processes would refuse: one line and status 2 from the launcher, no process started.
    (The processes used to find it themselves: process 0 printed the line, unless process 1 exited first and
    the launcher stopped process 0 before it did; the user then got a torch elastic dump and no line.)"""
    env = {}
    if setting.startswith("accelerate config"):
        home = tmp_path / "hf"
        (home / "accelerate").mkdir(parents=True)
        (home / "accelerate" / "default_config.yaml").write_text(FSDP_OFFLOAD_CONFIG)
        env["HF_HOME"] = str(home)
    else:
        name, value = setting.split("=")
        env[name] = value  # _env() drops the ACCELERATE_ variables of this process
    started = tmp_path / "started"
    started.mkdir()
    monkeypatch.setenv("PREFOPT_TEST_STARTED", str(started))
    _hook(tmp_path / "hook", STARTED_HOOK, monkeypatch)
    out = tmp_path / "run"
    done = _run([sys.executable, "-m", "prefopt", *tiny_run_args(tiny_model_dir, pairs, out, "steps=2"),
                 "--num-processes", "2", *flags], tmp_path / "work", **env)
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(f"prefopt: error: {expected}"), done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert list(started.iterdir()) == []
    assert not out.exists()


# Imported by every Python process the test starts: process 0 of a launch is slow to join its group.
SLOW_JOIN_HOOK = """
import os

if os.environ.get("RANK") == "0":
    import time

    from prefopt.training import distributed

    _join = distributed._join

    def _slow_join():
        time.sleep(float(os.environ["PREFOPT_TEST_SLOW_JOIN_S"]))
        return _join()

    distributed._join = _slow_join
"""


@pytest.mark.multiprocess
def test_a_refusal_found_by_the_processes_is_printed_once_when_process_0_is_slow(tiny_model_dir, pairs, tmp_path,
                                                                                  monkeypatch):
    """`accelerate launch` with an FSDP setting prefopt refuses: only the processes can see it. Process 1
    refuses first and its launcher stops process 0 at once: the line is printed once all the same (by the
    first process to refuse), and nothing is written."""
    _hook(tmp_path / "hook", SLOW_JOIN_HOOK, monkeypatch)
    monkeypatch.setenv("PREFOPT_TEST_SLOW_JOIN_S", "20")
    refused = tmp_path / "refused"
    done = _run(_accelerate_launch(*tiny_run_args(tiny_model_dir, pairs, refused, "steps=2"), fsdp=True,
                                   fsdp_flags=("--fsdp_offload_params", "true")), tmp_path / "work")
    assert done.returncode != 0  # accelerate's launcher reports its failed processes itself (status 1, a dump)
    errors = [line for line in done.stderr.splitlines() if line.startswith("prefopt: error:")]
    assert errors == [("prefopt: error: FSDP parameter offloading (fsdp_offload_params) is not supported; "
                       "set it to false")], done.stderr[-3000:]
    assert not refused.exists()


def _launched_by(marker: str, launcher: int) -> list:
    """The live processes, other than `launcher`, whose command line holds `marker`."""
    import psutil

    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.info["pid"] != launcher and marker in " ".join(proc.info["cmdline"] or ()):
            found.append(proc)
    return found


def _running(proc) -> bool:
    """Whether `proc` still runs (a zombie, ended but not yet reaped by its parent, does not)."""
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.mark.multiprocess
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_stopping_the_launcher_stops_its_processes(tiny_model_dir, pairs, tmp_path, sig):
    """SIGTERM to `prefopt run --num-processes 2` (or SIGKILL: no chance to pass it on) while it trains: both
    processes are gone within seconds, no summary.json is written, and the checkpoints are kept (--resume)."""
    psutil = pytest.importorskip("psutil")
    out = tmp_path / "run"
    work = tmp_path / "work"
    work.mkdir()
    cmd = [sys.executable, "-m", "prefopt", *tiny_run_args(tiny_model_dir, pairs, out, "steps=100000", "save_every=2"),
           "--num-processes", "2"]
    with (tmp_path / "stderr.txt").open("w+") as err:
        launcher = subprocess.Popen([str(c) for c in cmd], cwd=work, env=_env(), stdout=subprocess.DEVNULL,
                                    stderr=err, text=True)
        workers = []
        try:
            deadline = time.monotonic() + 300
            while not list((out / "checkpoints").glob("step-*")):  # training, and a checkpoint kept
                assert launcher.poll() is None, (tmp_path / "stderr.txt").read_text()[-3000:]
                assert time.monotonic() < deadline, "no checkpoint after 300 s"
                time.sleep(0.2)
            workers = _launched_by(str(out), launcher.pid)
            assert len(workers) == 2, workers
            launcher.send_signal(sig)
            deadline = time.monotonic() + 10
            while any(_running(proc) for proc in workers) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not any(_running(proc) for proc in workers)
            code = launcher.wait(timeout=30)
        finally:
            for proc in workers:
                with contextlib.suppress(psutil.Error):
                    proc.kill()
            if launcher.poll() is None:
                launcher.kill()
                launcher.wait()
        err.seek(0)
        stderr = err.read()
    assert _launched_by(str(out), launcher.pid) == []
    if sig == signal.SIGTERM:
        assert code == 128 + signal.SIGTERM, stderr[-3000:]
        assert stderr.splitlines()[-1].startswith("prefopt: interrupted (SIGTERM): stopped the 2 processes")
        assert "Traceback" not in stderr, stderr[-3000:]
    else:
        assert code == -signal.SIGKILL
    assert not (out / "summary.json").exists()
    assert (out / "config.yaml").is_file() and list((out / "checkpoints").glob("step-*"))


def test_online_methods_refuse_several_processes(tiny_model_dir, pairs, tmp_path, capsys):
    code = run_cli(["run", "--algo", "ppo", "--num-processes", "2", *tiny_run_args(tiny_model_dir, pairs, tmp_path)[1:]])
    assert code == 2
    assert "online method and runs in one process" in capsys.readouterr().err


def test_shares_and_flag_stripping():
    ids = list(range(7))
    shares = [Context(rank=r, world=3).shard(ids) for r in range(3)]
    assert shares == [[0, 1], [2, 3], [4, 5, 6]]
    assert Context().shard(ids) is ids
    assert [k for k in range(5) if Context(rank=1, world=2).mine(k)] == [1, 3]
    sharded = Context(rank=1, world=2, sharded=True)  # every sharded forward is collective: every job everywhere
    assert [k for k in range(5) if sharded.mine(k)] == [0, 1, 2, 3, 4]
    assert (sharded.loss_scale, Context(rank=1, world=2).loss_scale, Context(sharded=True).sharded) == (2.0, 1.0, False)
    argv = ["run", "--num-processes", "2", "--algo", "dpo", "--num-processes=3", "steps=2"]
    assert strip_flag(argv, "--num-processes") == ["run", "--algo", "dpo", "steps=2"]


@pytest.mark.multiprocess
@pytest.mark.parametrize("algo", ["dpo", "reward"])
def test_fsdp_two_processes_match_one(tiny_model_dir, pairs, tmp_path, algo):
    """`--num-processes 2 --fsdp`: parameters sharded (FSDP2), gradients summed; the same run as one process
    (LoRA policy with the adapter-disabled reference; LoRA reward model under its scalar head)."""
    common = ("--algo", algo, "steps=3", "lr=1e-2", "batch_size=2", "grad_accum=2", "eval_every=2", "save_every=0")
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli(tiny_run_args(tiny_model_dir, pairs, one, *common)) == 0
    done = _run([sys.executable, "-m", "prefopt", *tiny_run_args(tiny_model_dir, pairs, two, *common),
                 "--num-processes", "2", "--fsdp"], tmp_path / "work")
    assert done.returncode == 0, done.stderr[-3000:]
    # Float rounding only: the reduce-scatter adds the gradients in its own order, and sharded forwards take the
    # model's logits rather than the fused projection; AdamW at lr 1e-2 magnifies that to ~2e-5 in a weight.
    _assert_same_run(one, two, atol=1e-4)
    assert done.stdout.count("run folder:") == 1
    assert json.loads((two / "summary.json").read_text())["algo"] == algo


@pytest.mark.multiprocess
def test_fsdp_full_fine_tuning_with_a_reference_copy_matches_one(tiny_model_dir, pairs, tmp_path):
    common = ("steps=2", "lr=1e-3", "batch_size=2", "grad_accum=2", "adapter=full", "save_every=0")
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli(tiny_run_args(tiny_model_dir, pairs, one, *common)) == 0
    done = _run(_accelerate_launch(*tiny_run_args(tiny_model_dir, pairs, two, *common), fsdp=True), tmp_path / "work")
    assert done.returncode == 0, done.stderr[-3000:]
    assert _files(one) == _files(two)
    w1, w2 = load_file(one / "model" / "model.safetensors"), load_file(two / "model" / "model.safetensors")
    assert w1.keys() == w2.keys()
    for key in w1:
        assert_close(w2[key], w1[key], rtol=0, atol=1e-5)
    s1, s2 = (json.loads((run / "summary.json").read_text()) for run in (one, two))
    assert s1["eval_after"] == pytest.approx(s2["eval_after"], abs=1e-5) and s2["reference"] == "copy"


@pytest.mark.parametrize(("flag", "name"), [("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"),
                                            ("ACCELERATE_USE_MEGATRON_LM", "Megatron-LM")])
def test_deepspeed_and_megatron_launches_are_refused(monkeypatch, flag, name):
    from prefopt.training import distributed

    monkeypatch.setenv(flag, "true")
    with pytest.raises(PrefoptError, match=f"^{name} is not supported: .*FSDP in `accelerate config`$"):
        distributed._join()


FSDP_VARS = ("FSDP_SHARDING_STRATEGY", "FSDP_RESHARD_AFTER_FORWARD", "FSDP_OFFLOAD_PARAMS",
             "FSDP_ACTIVATION_CHECKPOINTING")


@pytest.mark.parametrize(("settings", "expected"), [
    ({}, True),
    ({"FSDP_RESHARD_AFTER_FORWARD": "false"}, False),
    ({"FSDP_RESHARD_AFTER_FORWARD": "true", "FSDP_SHARDING_STRATEGY": "SHARD_GRAD_OP"}, False),
    ({"FSDP_SHARDING_STRATEGY": "1", "FSDP_RESHARD_AFTER_FORWARD": "FULL_SHARD"}, True),
    ({"FSDP_SHARDING_STRATEGY": "3"}, "NO_SHARD is data-parallel training"),
    ({"FSDP_SHARDING_STRATEGY": "HYBRID_SHARD"}, "HYBRID_SHARD is not supported"),
    ({"FSDP_OFFLOAD_PARAMS": "true"}, "offloading (fsdp_offload_params) is not supported"),
    ({"FSDP_ACTIVATION_CHECKPOINTING": "true"}, "pass gradient_checkpointing=true"),
    ({"FSDP_RESHARD_AFTER_FORWARD": "sometimes"}, "expected true or false"),
])
def test_accelerate_fsdp_settings(monkeypatch, settings, expected):
    from prefopt.training.distributed import fsdp_reshard_after_forward

    for name in FSDP_VARS:
        monkeypatch.delenv(name, raising=False)
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    if isinstance(expected, bool):
        assert fsdp_reshard_after_forward() is expected
    else:
        with pytest.raises(PrefoptError, match=re.escape(expected)):
            fsdp_reshard_after_forward()


@pytest.mark.multiprocess
def test_fsdp_without_resharding_after_forward_matches_one(tiny_model_dir, pairs, tmp_path):
    """`accelerate launch --use_fsdp --fsdp_reshard_after_forward false`: layers keep their gathered weights
    from forward to backward; the same run as one process."""
    common = ("--algo", "dpo", "steps=2", "lr=1e-2", "batch_size=2", "grad_accum=2", "eval_every=1")
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli(tiny_run_args(tiny_model_dir, pairs, one, *common)) == 0
    done = _run(_accelerate_launch(*tiny_run_args(tiny_model_dir, pairs, two, *common), fsdp=True,
                                   fsdp_flags=("--fsdp_reshard_after_forward", "false")), tmp_path / "work")
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_run(one, two, atol=1e-4)


@pytest.mark.multiprocess
def test_fsdp_refuses_uneven_shares(tiny_model_dir, pairs, tmp_path):
    done = _run([sys.executable, "-m", "prefopt", *tiny_run_args(tiny_model_dir, pairs, tmp_path / "r", "steps=2",
                 "batch_size=3"), "--num-processes", "2", "--fsdp"], tmp_path / "work")
    assert done.returncode == 2 and "must be divisible by the 2 processes" in done.stderr, done.stderr[-2000:]
    assert done.stderr.count("prefopt: error:") == 1
    assert not (tmp_path / "r").exists()


# Imported by every Python process started with this folder first on PYTHONPATH: the n-th training step of
# each process raises KeyboardInterrupt (a Ctrl-C reaching every process of a launch).
INTERRUPT_HOOK = """
import os
from prefopt.training import offline as train

_real, _calls = train.Trainer.train_step, [0]


def _dies(self, *args, **kwargs):
    _calls[0] += 1
    if _calls[0] == int(os.environ["PREFOPT_TEST_INTERRUPT_AT"]):
        raise KeyboardInterrupt
    return _real(self, *args, **kwargs)


train.Trainer.train_step = _dies
"""


@pytest.mark.multiprocess
def test_fsdp_checkpoints_resume_across_sharded_and_one_process(tiny_model_dir, pairs, tmp_path, monkeypatch):
    """Checkpoints hold whole tensors: a sharded run's step-2 checkpoint resumes in one process, a one-process
    run's resumes sharded, and both end where the uninterrupted one-process run ends."""
    from prefopt.training import offline as train_module

    common = ("steps=4", "save_every=2", "lr=5e-3", "batch_size=2", "grad_accum=2")
    straight, sharded_first, sharded_second = tmp_path / "straight", tmp_path / "a", tmp_path / "b"
    assert run_cli(tiny_run_args(tiny_model_dir, pairs, straight, *common)) == 0

    _hook(tmp_path / "hook", INTERRUPT_HOOK, monkeypatch)
    monkeypatch.setenv("PREFOPT_TEST_INTERRUPT_AT", "3")
    done = _run([sys.executable, "-m", "prefopt", *tiny_run_args(tiny_model_dir, pairs, sharded_first, *common),
                 "--num-processes", "2", "--fsdp"], tmp_path / "work")
    monkeypatch.delenv("PYTHONPATH")
    assert done.returncode == 130, done.stderr[-3000:]
    assert [p.name for p in (sharded_first / "checkpoints").iterdir()] == ["step-000002"]  # written by process 0
    assert run_cli(["run", "--resume", sharded_first]) == 0

    undo = interrupt_on_call(monkeypatch, train_module.Trainer, "train_step", 3)
    assert run_cli(tiny_run_args(tiny_model_dir, pairs, sharded_second, *common)) == 130
    undo()
    done = _run([sys.executable, "-m", "prefopt", "run", "--resume", sharded_second, "--num-processes", "2", "--fsdp"],
                tmp_path / "work")
    assert done.returncode == 0, done.stderr[-3000:]

    for resumed, processes in ((sharded_first, (1, 1)), (sharded_second, (1, 2))):  # those of the last launch
        assert not (resumed / "checkpoints").exists()
        # float rounding only (the reduce-scatter adds in its own order), as in the runs above
        _assert_same_run(straight, resumed, atol=1e-4, processes=processes)
