"""release_host_memory: glibc's mmap threshold fixed so freed tensors' memory goes back to the system; when a
run sets it, and what the setter does (a fake C library records the call; the real one accepts it)."""

from __future__ import annotations

import platform

import pytest

from prefopt.core import host_memory


class _FakeLibc:
    def __init__(self, answer: int):
        self.answer, self.calls = answer, []

        def mallopt(param, value):
            self.calls.append((param, value))
            return self.answer

        self.mallopt = mallopt


def test_the_threshold_is_set_through_mallopt(monkeypatch):
    libc = _FakeLibc(answer=1)
    monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda name: libc)
    monkeypatch.setattr(host_memory.sys, "platform", "linux")
    assert host_memory.release_freed_memory() is True
    assert libc.calls == [(-3, 4 * 2**20)]  # M_MMAP_THRESHOLD, 4 MiB
    assert host_memory.release_freed_memory(2**20) is True and libc.calls[-1] == (-3, 2**20)


def test_a_c_library_without_it_or_refusing_it_is_no_error(monkeypatch):
    monkeypatch.setattr(host_memory.sys, "platform", "linux")
    monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda name: _FakeLibc(answer=0))
    assert host_memory.release_freed_memory() is False  # refused

    def no_libc(name):
        raise OSError("libc.so.6: cannot open shared object file")

    monkeypatch.setattr(host_memory.ctypes, "CDLL", no_libc)
    assert host_memory.release_freed_memory() is False  # musl, or no libc.so.6
    monkeypatch.setattr(host_memory.ctypes, "CDLL", lambda name: object())  # a libc without mallopt
    assert host_memory.release_freed_memory() is False
    monkeypatch.setattr(host_memory.sys, "platform", "darwin")
    assert host_memory.release_freed_memory() is False


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_accepts_it():
    assert host_memory.release_freed_memory() is True


def test_auto_releases_on_a_cpu_only():
    assert host_memory.use_release("auto", "cpu") and host_memory.use_release("auto", "cpu:0")
    assert not host_memory.use_release("auto", "cuda:0") and not host_memory.use_release("auto", "mps")
    assert host_memory.use_release(True, "cuda") and not host_memory.use_release(False, "cpu")


@pytest.mark.parametrize(("value", "calls"), [("auto", 1), (False, 0), (True, 1)])
def test_a_cpu_run_sets_it_as_the_option_says(tmp_path, tiny_model_dir, monkeypatch, value, calls):
    from helpers import write_learnable_pairs

    import prefopt
    from prefopt.training import offline

    made = []
    monkeypatch.setattr(offline, "release_freed_memory", lambda: made.append(1) or True)
    prefopt.run(algo="dpo", data=str(write_learnable_pairs(tmp_path / "p.jsonl", 8)), model=str(tiny_model_dir),
                output_dir=str(tmp_path / "out"), steps=1, batch_size=2, eval_size=2, max_length=32,
                progress=False, release_host_memory=value)  # fmt: skip
    assert len(made) == calls


def test_an_online_run_sets_it_too(tmp_path, tiny_model_dir, monkeypatch):
    import prefopt
    from prefopt.training import online

    made = []
    monkeypatch.setattr(online, "release_freed_memory", lambda: made.append(1) or True)
    prefopt.run(algo="grpo", data="builtin:qa", model=str(tiny_model_dir), output_dir=str(tmp_path / "out"),
                steps=1, batch_size=2, eval_size=2, max_length=32, progress=False)  # fmt: skip
    assert made == [1]
