"""Small data files and CLI wrappers shared by the end-to-end tests."""

from __future__ import annotations

import json
from pathlib import Path

from prefopt.cli import main
from prefopt.judges import Judge

TOPICS = ["cats", "rain", "maps", "tea", "bikes", "stars", "books", "songs", "trees", "boats", "clocks", "bread"]


def write_learnable_pairs(path: Path, n: int = 48) -> Path:
    """A trivially learnable preference set: the chosen answer is always 'yes', the rejected 'no'."""
    with path.open("w") as f:
        for i in range(n):
            prompt = f"Question {i}: do you like {TOPICS[i % len(TOPICS)]}?"
            f.write(json.dumps({"prompt": prompt, "chosen": "yes", "rejected": "no"}) + "\n")
    return path


def letter_share(prompt: str, response: str) -> float:
    """A gold rule a tiny random model can be graded by: the share of the reply's characters that are 'e'."""
    return response.count("e") / max(1, len(response))


class LetterJudge(Judge):
    """A trivially learnable gold rule as a judge: the share of the response's characters that are 'e'."""

    def score(self, prompts, responses):
        return [letter_share("", r) for r in responses]


def write_reward_module(folder: Path, monkeypatch, name: str, source: str) -> str:
    """folder/<name>.py holding `source` (reward functions), importable for this test: folder first on sys.path,
    no stale copy in sys.modules. Returns the judge spec prefix, 'python:<name>'."""
    import sys

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return f"python:{name}"


def online_run_config(model_dir: Path, out: Path, **overrides):
    """A RunConfig for an online method on the tiny model: builtin:qa prompts, 2 steps, LoRA r 8, fp32."""
    from prefopt.training.config import RunConfig

    options = {"model": str(model_dir), "data": "builtin:qa", "output_dir": str(out), "precision": "fp32",
               "progress": False, "max_length": 64, "max_prompt_length": 48, "batch_size": 2, "eval_size": 4,
               "steps": 2, "lora_r": 8, "lora_alpha": 16}
    return RunConfig(**{**options, **overrides})


def write_prompts(path: Path, n: int) -> Path:
    """A prompt-only data file of n distinct prompts, for online methods."""
    path.write_text("".join(json.dumps({"prompt": f"Say something about topic {i}."}) + "\n" for i in range(n)))
    return path


def tiny_run_args(model_dir: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run", "--model", str(model_dir), "--data", str(data), "--output-dir", str(out),
        "precision=fp32", "progress=false", "max_length=64", "max_prompt_length=48",
        "batch_size=4", "eval_size=8", "lora_r=8", "lora_alpha=16", *extra,
    ]


def run_cli(args: list[str]) -> int:
    return main([str(a) for a in args])


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


class FakeDist:
    def __init__(self, name):
        self.name = name


class FakeEntryPoint:
    """Stands in for importlib.metadata.EntryPoint in discovery tests."""

    def __init__(self, name, value, package, target=None, error=None):
        self.name, self.value, self.dist = name, value, FakeDist(package)
        self._target, self._error = target, error

    def load(self):
        if self._error:
            raise self._error
        return self._target


def perturb_lora(model) -> None:
    """LoRA B starts at zero (the policy equals the base, every A gradient is zero): give B values."""
    import torch

    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def interrupt_on_call(monkeypatch, owner, method: str, n: int):
    """The n-th call of owner.method raises KeyboardInterrupt (a user's Ctrl-C); returns a function that undoes it."""
    real = getattr(owner, method)
    calls = {"n": 0}

    def dies(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(owner, method, dies)
    return lambda: monkeypatch.setattr(owner, method, real)



def assert_option_trains_alike(tmp_path: Path, model_dir, algo: str, option: str, module, forward: str,
                               monkeypatch, values=(False, True)) -> None:
    """A short tiny-model run with run `option` off (values[0]) and one with it on (values[1]) log the same
    numbers (to 1e-4; times, speeds and memory aside), and `module.forward` (the code path the option selects)
    ran only in the second, at least once per step."""
    import pytest

    import prefopt

    calls = []
    real = getattr(module, forward)
    monkeypatch.setattr(module, forward, lambda *a, **k: calls.append(1) or real(*a, **k))
    data = str(write_learnable_pairs(tmp_path / "p.jsonl", 24))
    runs = {}
    off, on = values
    for value in values:
        assert not calls  # nothing on that path before the option's run
        out = tmp_path / str(value)
        prefopt.run(algo=algo, data=data, model=str(model_dir), output_dir=str(out), steps=3, batch_size=4,
                    eval_size=4, max_length=48, precision="fp32", progress=False, lora_r=4, lora_alpha=8,
                    reference="adapter", **{option: value})  # fmt: skip
        runs[value] = read_metrics(out)
    assert len(calls) >= 3
    assert len(runs[on]) == len(runs[off]) > 3
    for got, want in zip(runs[on], runs[off]):
        assert got.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, float) and "seconds" not in key and key not in ("tokens_per_second", "peak_rss_mb"):
                assert got[key] == pytest.approx(value, rel=1e-4, abs=1e-5), (key, got["step"])


def assert_option_refused(tmp_path: Path, model_dir, algo: str, setting: str, capsys, *expected: str) -> None:
    """`prefopt run --algo algo setting` stops with exit status 2 and one error line holding every `expected`
    text, before its output folder exists."""
    data = write_learnable_pairs(tmp_path / "p.jsonl", 16)
    code = run_cli(["run", "--algo", algo, f"data={data}", f"model={model_dir}", setting,
                    f"output_dir={tmp_path / 'out'}", "steps=1", "eval_size=4", "progress=false"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and all(text in err[0] for text in expected), err
    assert not (tmp_path / "out").exists()


RAGGED_SHAPES = [(3, 2, 6), (7, 5, 1), (2, 9, 4), (5, 3, 3)]  # (prompt, chosen, rejected) lengths


def ragged_pairs(seed: int, shapes=RAGGED_SHAPES) -> dict:
    """Pairs of ragged lengths (random ids), collated the way training does (right padding, chosen rows then
    rejected)."""
    import torch

    from prefopt.data import TokenizedPair, collate_pairs

    g = torch.Generator().manual_seed(seed)

    def ids(n: int) -> list[int]:
        return torch.randint(3, 300, (n,), generator=g).tolist()

    pairs = [TokenizedPair(i, ids(p), ids(c), ids(r)) for i, (p, c, r) in enumerate(shapes)]
    return collate_pairs(pairs, pad_id=0)


def lora_with_random_b(model):
    """`model` under a small peft LoRA whose B matrices are random (B = 0 would leave the model unchanged)."""
    import torch
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)
    return model


def tiny_pair_batch() -> dict:
    """Two rows of 9 tokens, the last 5 scored: a batch for forward_token_logps on the tiny model."""
    import torch

    ids = torch.randint(3, 200, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.zeros_like(ids)
    mask[:, 4:] = 1
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "loss_mask": mask}


def lora_logps_and_grads(model_dir, prepare=None, autocast: bool = False):
    """(log-probs (N, K), {name: gradient} of the LoRA parameters) of the tiny model with LoRA (B non-zero) on
    tiny_pair_batch, after prepare(model) if given, under bf16 autocast if asked."""
    import torch

    from prefopt.core import logprobs
    from prefopt.core.models import load_model

    torch.manual_seed(0)
    model = load_model(str(model_dir), adapter="lora")
    perturb_lora(model)
    if prepare is not None:
        prepare(model)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        logps, _ = logprobs.forward_token_logps(model, tiny_pair_batch())  # (N, K)
    logps.sum().backward()
    return logps.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
