"""benchmarks/speed_vs_trl.py on the tiny model: prefopt's DPO step and trl's DPOTrainer step, driven as the
benchmark drives them, give the same loss (within 1e-4 in fp32) from the same weights on the same batches."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl", reason="trl not installed: the benchmark against trl is skipped")

# Importing trl's trainers trips a torch.jit deprecation inside a dependency; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "speed_vs_trl.py"


def _script():
    spec = importlib.util.spec_from_file_location("speed_vs_trl", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("pad_to", [0, 48])
def test_loss_check_agrees_on_tiny_model(tiny_model_dir, pad_to):
    sv = _script()
    setup = sv.Setup(model=str(tiny_model_dir), rows=16, batch_size=2, max_length=64, max_prompt_length=32,
                     pad_to=pad_to, precision="fp32", lora_r=8, lora_alpha=16, lr=1e-2)
    tokenizer, pairs, _ = sv.load_pairs(setup)
    if pad_to:
        assert all(len(p.prompt_ids) + len(p.chosen_ids) == pad_to == len(p.prompt_ids) + len(p.rejected_ids)
                   for p in pairs)
    batches = sv.batch_order(pairs, setup, 3)
    assert all(len(b) == 2 for b in batches)
    check = sv.loss_check(setup, tokenizer, pairs, batches)
    assert len(check["trl_losses"]) == len(check["prefopt_losses"]) == 3
    assert check["passed"], check
    assert check["max_abs_diff"] < 1e-4
    # not vacuous: perturbed LoRA B moves the policy off the reference, and training moves the loss
    assert max(abs(x - math.log(2)) for x in check["prefopt_losses"]) > 1e-3
    assert len({round(x, 6) for x in check["prefopt_losses"]}) > 1


@pytest.mark.e2e
def test_benchmark_end_to_end_on_tiny_model(tiny_model_dir, tmp_path):
    """The alternating protocol: both trainers take the same steps on the same batches (fp32: same losses)."""
    sv = _script()
    out = tmp_path / "speed"
    code = sv.main(["--model", str(tiny_model_dir), "--rows", "32", "--max-length", "64", "--batch-size", "2",
                    "--precision", "fp32", "--reps", "2", "--warmup", "1", "--steps", "2", "--check-steps", "1",
                    "--lr", "1e-2", "--out", str(out)])
    assert code == 0
    record = json.loads((out / "dpo_vs_trl.json").read_text())
    assert "dpo_vs_trl.md" in {p.name for p in out.iterdir()}
    for impl in ("prefopt", "trl"):
        r = record["results"][impl]
        assert [len(s) for s in r["seconds_per_step"]] == [2, 2] and r["timed_steps"] == 4
        assert r["seconds_per_step_min"] <= r["seconds_per_step_median"] <= r["seconds_per_step_max"]
        assert r["tokens_per_second"] > 0 and r["peak_memory_mb"] > 0
    assert record["ratios"]["steps_per_second_prefopt_over_trl"] > 0
    assert record["loss_check"]["passed"]
    assert record["reference"]["prefopt"] == "adapter"
    assert record["machine"]["versions"]["trl"]
    assert record["phase_order"] == [["prefopt", "trl"], ["trl", "prefopt"]]  # taking turns to go first
    ours, theirs = record["train_losses"]["prefopt"], record["train_losses"]["trl"]
    assert len(ours) == len(theirs) == 6
    assert ours == pytest.approx(theirs, abs=1e-4)
    assert ours[0] == pytest.approx(math.log(2), abs=1e-6)  # LoRA B = 0 at the start, in both


def test_spread_lengths_fit_without_truncation_and_repeat():
    """--lengths spread: each pair's tokens cycled to drawn lengths that fit max_length, the same for a seed."""
    import random

    from prefopt.data import TokenizedPair

    sv = _script()
    pair = TokenizedPair(0, [1, 2, 3], [4, 5], [6, 7, 8, 9])

    def draw(seed: int) -> list:
        rng = random.Random(seed)
        return [sv.spread_pair(pair, 256, 128, rng) for _ in range(400)]

    pairs = draw(0)
    for p in pairs:
        assert 4 <= len(p.prompt_ids) <= 128
        assert len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) <= 256
        assert min(len(p.chosen_ids), len(p.rejected_ids)) >= 4
        assert p.prompt_ids[-3:] == [1, 2, 3] and p.chosen_ids[:2] == [4, 5]  # the pair's own tokens, cycled
    replies = sorted(len(p.chosen_ids) for p in pairs)
    assert 60 <= replies[200] <= 95  # median near 30% of 256
    assert replies[-1] >= 2.5 * replies[200]  # a long tail
    assert [(len(p.prompt_ids), len(p.chosen_ids)) for p in draw(0)] == [(len(p.prompt_ids), len(p.chosen_ids)) for p in pairs]


def _benchmark(name: str, monkeypatch):
    """A benchmarks/ script as a module, importing its neighbours (speed_vs_trl, report) as when it runs."""
    _script()
    monkeypatch.syspath_prepend(str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location(name, SCRIPT.parent / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_run(name: str, model_dir, tmp_path, monkeypatch, *args: str) -> dict:
    """benchmarks/<name>.py on the tiny model (batch 2, max length 48, then `args`), written into tmp_path:
    its exit status must be 0; returns its <name>.json."""
    script = _benchmark(name, monkeypatch)
    assert script.main(["--model", str(model_dir), "--batch-size", "2", "--max-length", "48", *args,
                        "--out", str(tmp_path)]) == 0  # fmt: skip
    return json.loads((tmp_path / f"{name}.json").read_text())


@pytest.mark.e2e
def test_share_prompt_benchmark_on_tiny_model(tiny_model_dir, tmp_path, monkeypatch):
    record = _tiny_run("share_prompt", tiny_model_dir, tmp_path, monkeypatch, "--batches", "2", "--passes", "1")
    layouts = ("padded", "padding_free", "shared", "packed")
    assert [len(p) for name in layouts for p in record["seconds"][name]] == [2, 2, 2, 2]
    cells = record["cells"]
    for padded, free, shared, packed in zip(*(cells[name] for name in layouts), strict=True):
        # one row of P + C + R per pair is fewer cells than two rows of P + max(C, R), every prompt being
        # non-empty; the packed layouts carry no padding
        assert 0 < packed <= shared < padded and packed < free <= padded
    assert "packed / padded" in (tmp_path / "share_prompt.md").read_text()


def test_step_flops_counts_products_per_step_by_hand(monkeypatch):
    """Three steps of five matrix products each, 2mkn FLOPs apiece (times the batch for bmm), plus additions that
    are not counted; the first step is left out of the per-step figures. With a vocabulary of 400: the product
    with an N of 400 and the one with a K of 120 (a chunk of a quarter or more) are the output projection's, those
    with a dimension of 64 or less low rank, the 65 x 66 x 67 one a layer's."""
    import torch

    script = _benchmark("step_flops", monkeypatch)
    a, b, c, d = torch.ones(4, 6), torch.ones(6, 5), torch.ones(3, 2), torch.ones(2, 400)
    big_a, big_b, batch_a, batch_b = torch.ones(65, 66), torch.ones(66, 67), torch.ones(2, 3, 4), torch.ones(2, 4, 5)
    chunk_a, chunk_b, chunk_out = torch.ones(70, 120), torch.ones(120, 80), torch.empty(70, 80)

    def run(step_done):
        for _ in range(3):
            (a @ b).add_(1)
            torch.addmm(torch.zeros(3, 400), c, d)
            big_a @ big_b
            torch.bmm(batch_a, batch_b)
            torch.mm(chunk_a, chunk_b, out=chunk_out)
            step_done()

    result = script.step_flops(run, steps=2, vocab_size=400)
    layer, head, chunk = 2 * 65 * 66 * 67, 2 * 3 * 2 * 400, 2 * 70 * 120 * 80
    assert result["flops_per_step"] == 240 + head + layer + 2 * 2 * 3 * 4 * 5 + chunk
    assert result["flops_per_step_by_op"] == {"mm": 240 + layer + chunk, "addmm": head, "bmm": 240}
    kinds = result["products_by_kind"]
    assert {kind: part["flops_per_step"] for kind, part in kinds.items()} == {
        "low rank (LoRA)": 480, "output projection": head + chunk, "layer": layer}
    assert all(part["seconds_per_step"] > 0 for part in kinds.values())
    assert 0 < result["product_seconds_per_step"] <= result["instrumented_seconds_per_step"]
    with pytest.raises(RuntimeError, match="expected 3 step ends, saw 2"):
        script.step_flops(lambda step_done: (step_done(), step_done()), steps=2, vocab_size=400)


def test_step_flops_counts_in_place_addmm_which_flop_counter_mode_skips(monkeypatch):
    """prefopt's LoRA layers add their update with addmm_ (torch's FlopCounterMode counts no addmm_)."""
    import torch

    script = _benchmark("step_flops", monkeypatch)
    out, x, y = torch.zeros(8, 16), torch.ones(8, 4), torch.ones(4, 16)
    result = script.step_flops(lambda step_done: [(out.addmm_(x, y), step_done()) for _ in range(2)], steps=1,
                               vocab_size=1000)
    assert result["flops_per_step_by_op"] == {"addmm_": 2 * 8 * 4 * 16}
    assert result["products_by_kind"]["low rank (LoRA)"]["flops_per_step"] == 2 * 8 * 4 * 16


@pytest.mark.e2e
def test_span_kernel_benchmark_times_padded_rows_against_span_calls_on_the_same_tokens(monkeypatch):
    import torch

    script = _benchmark("cpu_attention", monkeypatch)
    record = script.span_kernel_ms(2, torch.bfloat16, reps=1)
    assert record["tokens"] == sum(sum(shape) for shape in record["shapes"])
    assert record["rows_width"] == max(sum(shape) for shape in record["shapes"])
    assert record["max_difference"] <= 5e-2 and record["padded_rows_ms"] > 0 and record["span_calls_ms"] > 0


def test_step_flops_benchmark_on_tiny_model(tiny_model_dir, tmp_path, monkeypatch):
    record = _tiny_run("step_flops", tiny_model_dir, tmp_path, monkeypatch, "--steps", "1", "--rows", "16")
    ours, theirs = record["prefopt"]["flops_per_step"], record["trl"]["flops_per_step"]
    # prefopt runs each prompt once and projects only reply tokens; trl projects every token of both rows
    assert 0 < ours < theirs
    assert record["flops_ratio_trl_over_prefopt"] == theirs / ours
    assert set(record["matmul_flop_per_s"]) == {"q/o", "k/v", "mlp up", "mlp down", "output projection"}
    for side in (record["prefopt"], record["trl"]):  # the kinds account for every counted FLOP
        assert sum(part["flops_per_step"] for part in side["products_by_kind"].values()) == pytest.approx(
            side["flops_per_step"])


@pytest.mark.e2e
def test_compile_layers_benchmark_on_tiny_model(tiny_model_dir, tmp_path, monkeypatch):
    record = _tiny_run("compile_layers", tiny_model_dir, tmp_path, monkeypatch, "--batches", "2", "--passes", "1")
    assert [len(p) for p in record["seconds"]["eager"]] == [len(p) for p in record["seconds"]["compiled"]] == [2]
    assert record["first_compiled_pass_seconds"] > 0


def test_fused_head_backward_benchmark_times_both_paths_and_restores_the_budget(tmp_path, monkeypatch):
    from prefopt.core import logprobs

    budget = logprobs._KEEP_SOFTMAX_BYTES
    script = _benchmark("fused_head_backward", monkeypatch)
    assert script.main(["--rows", "8", "--hidden", "16", "--vocab", "32", "--reps", "2", "--calls", "1",
                        "--out", str(tmp_path)]) == 0  # fmt: skip
    (row,) = json.loads((tmp_path / "fused_head_backward.json").read_text())["rows"]
    assert row["rows"] == 8 and row["kept_by_default"]
    assert len(row["kept"]) == len(row["recomputed"]) == len(row["kept, fresh buffer"]) == 2
    assert logprobs._KEEP_SOFTMAX_BYTES == budget


def test_module_rebinds_keep_trl_kernels_out_of_prefopt_phases():
    """trl's Liger option rebinds names in transformers' modeling module for the whole process; the benchmark
    takes them out for prefopt's phases (run inside trl's train()) and for good once trl has trained."""
    import types

    script = _script()
    own_rope, own_norm = object(), object()
    module = types.SimpleNamespace(apply_rotary_pos_emb=own_rope, Norm=own_norm, other=1)
    rebinds = script.ModuleRebinds(module)
    liger_rope, liger_norm = object(), object()
    module.apply_rotary_pos_emb, module.Norm = liger_rope, liger_norm  # what train() does when it starts
    module.added = 2  # a name the module did not have: not the module's own, left alone
    assert rebinds.changed() == {"apply_rotary_pos_emb": liger_rope, "Norm": liger_norm}
    with rebinds.undone():
        assert (module.apply_rotary_pos_emb, module.Norm, module.other) == (own_rope, own_norm, 1)
    assert (module.apply_rotary_pos_emb, module.Norm) == (liger_rope, liger_norm)
    rebinds.undo()
    assert (module.apply_rotary_pos_emb, module.Norm, module.added) == (own_rope, own_norm, 2)
    assert rebinds.changed() == {}


@pytest.mark.e2e
def test_dispatch_counts_leave_warm_up_steps_out(tiny_model_dir, tmp_path, monkeypatch):
    script = _benchmark("dispatch_counts", monkeypatch)
    args = ["--model", str(tiny_model_dir), "--batch-size", "2", "--max-length", "48", "--precision", "fp32"]
    assert script.main([*args, "--warmup", "2", "--steps", "2", "--out", str(tmp_path / "warm")]) == 0
    assert script.main([*args, "--steps", "2", "--out", str(tmp_path / "cold")]) == 0
    warm = json.loads((tmp_path / "warm" / "dispatch_counts.json").read_text())
    cold = json.loads((tmp_path / "cold" / "dispatch_counts.json").read_text())
    for name in ("prefopt", "trl"):
        assert warm[name]["aten_per_step"] > 0
        # the cold count holds the first step (optimizer state created) and, for trl, its train() setup
        assert cold[name]["aten_per_step"] > warm[name]["aten_per_step"]
    assert "gpu_busy_fraction" not in warm["prefopt"]


def test_shape_split_replays_the_run_order(monkeypatch):
    """A step is 'seen' when any earlier step of the process, either trainer's, warm-up or loss check, had its
    padded length; the other trainer's times on the same steps come alongside. Worked by hand below."""
    script = _benchmark("shape_split", monkeypatch)
    # 2 reps of 1 warm-up + 2 timed steps; one loss-check step (length 10); rep 1 has trl go first
    lengths = [10, 20, 30, 40, 20, 50]
    record = {
        "protocol": {"reps": 2, "warmup_steps": 1, "timed_steps": 2},
        "loss_check": {"steps": 1},
        "phase_order": [["prefopt", "trl"], ["trl", "prefopt"]],
        "results": {"prefopt": {"seconds_per_step": [[1.0, 2.0], [3.0, 4.0]]},
                    "trl": {"seconds_per_step": [[5.0, 6.0], [7.0, 8.0]]}},
    }
    result = script.split(record, lengths)
    # prefopt rep 0 meets 20 (new), 30 (new); rep 1, after trl's phase, 20 (seen), 50 (seen: trl met it)
    assert result["prefopt"]["new"] == {"steps": 2, "median_s": 1.5, "trl_same_steps_median_s": 5.5}
    assert result["prefopt"]["seen"] == {"steps": 2, "median_s": 3.5, "trl_same_steps_median_s": 7.5}
    # trl rep 0 follows prefopt: 20, 30 seen; rep 1 goes first: 20 seen (rep 0), 50 new
    assert result["trl"]["new"] == {"steps": 1, "median_s": 8.0, "prefopt_same_steps_median_s": 4.0}
    assert result["trl"]["seen"] == {"steps": 3, "median_s": 6.0, "prefopt_same_steps_median_s": 2.0}
