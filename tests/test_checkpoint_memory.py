"""Weights off the checkpoint file's memory map (prefopt.core.checkpoint_memory)."""

import gc
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from prefopt.core import checkpoint_memory, registry
from prefopt.core.checkpoint_memory import (
    checkpoint_mappings,
    move_off_checkpoint_files,
    replace_data,
    whole_pages,
)
from prefopt.core.models import hold_frozen_lora_bases_in, load_model
from prefopt.training.config import RunConfig
from prefopt.training.policy import load_policy

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")


def _mapped(t: torch.Tensor) -> bool:
    start = t.data_ptr()
    return any(lo <= start < hi for lo, hi in checkpoint_mappings())


def _mapped_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if _mapped(p)]


def test_whole_pages_keeps_the_pages_shared_with_neighbours():
    assert whole_pages(4096, 8192, page=4096) == (4096, 8192)  # aligned: all of it
    assert whole_pages(100, 8192, page=4096) == (4096, 4096)  # bytes 100..8292: only page 4096..8192 is whole
    assert whole_pages(100, 4000, page=4096) == (4096, 0)  # inside one page: nothing
    assert whole_pages(8191, 8194, page=4096) == (8192, 8192)  # 8191..16385: pages 8192..16384


def test_only_private_maps_of_checkpoint_files_count():
    maps = (
        "7f0000000000-7f0000010000 rw-p 00000000 fe:00 11 /models/a/model.safetensors\n"
        "7f0000020000-7f0000030000 r--s 00000000 fe:00 12 /models/b/model.safetensors\n"  # shared: not ours to drop
        "7f0000040000-7f0000050000 r-xp 00000000 fe:00 13 /usr/lib/libc.so.6\n"
        "7f0000060000-7f0000070000 rw-p 00000000 00:00 0\n"
        "7f0000080000-7f0000090000 r--p 00001000 fe:00 14 /data/my model/shard-00001.safetensors\n"
        "7f00000a0000-7f00000b0000 rw-p 00000000 fe:00 15 /models/c/pytorch_model.bin\n"
        "7f00000c0000-7f00000d0000 r--p 00000000 fe:00 16 /usr/share/locale/locale-archive\n"
    )
    assert checkpoint_mappings(maps) == [
        (0x7F0000000000, 0x7F0000010000), (0x7F0000080000, 0x7F0000090000), (0x7F00000A0000, 0x7F00000B0000)
    ]


@pytest.fixture
def mapped_file(tmp_path):
    """Tensors read as transformers reads a safetensors file: views of a private map of it."""
    path = tmp_path / "w.safetensors"
    save_file({"big": torch.randn(3 * 4096 + 7), "small": torch.randn(50), "other": torch.randn(2000)}, str(path))
    with safe_open(str(path), framework="pt", device="cpu", backend="mmap") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        yield tensors, load_file(str(path))


@linux
def test_dropped_pages_read_the_same_values_again(mapped_file):
    tensors, copies = mapped_file
    big = tensors["big"]
    assert _mapped(big)
    checkpoint_memory._drop_pages(big.data_ptr(), big.nelement() * big.element_size())
    assert torch.equal(big, copies["big"])  # read again from the file


@linux
def test_replace_data_drops_the_old_pages_only_when_they_are_in_a_map(mapped_file, monkeypatch):
    tensors, copies = mapped_file
    dropped = []
    monkeypatch.setattr(checkpoint_memory, "_drop_pages", lambda start, nbytes: dropped.append((start, nbytes)))
    mapped = torch.nn.Parameter(tensors["big"], requires_grad=False)
    span = (mapped.data_ptr(), mapped.nelement() * 4)
    replace_data(mapped, mapped.data.to(torch.bfloat16), checkpoint_mappings())
    assert dropped == [span]
    assert mapped.dtype == torch.bfloat16 and torch.equal(mapped, copies["big"].to(torch.bfloat16))
    own = torch.nn.Parameter(torch.randn(10), requires_grad=False)
    replace_data(own, own.data.clone(), checkpoint_mappings())
    assert dropped == [span]  # memory of the process's own: nothing dropped


@linux
def test_views_of_one_stored_tensor_stay_views_of_each_other(mapped_file):
    tensors, copies = mapped_file
    module = torch.nn.Module()
    module.a = torch.nn.Parameter(tensors["big"][:5000])
    module.b = torch.nn.Parameter(tensors["big"][4000:9000])  # overlaps a
    module.c = torch.nn.Parameter(tensors["big"][9000:])  # overlaps neither
    module.d = torch.nn.Parameter(tensors["other"])
    module.register_buffer("e", tensors["small"])
    assert move_off_checkpoint_files(module) == 3  # c, d, e
    assert _mapped(module.a) and _mapped(module.b)
    assert module.b.data_ptr() - module.a.data_ptr() == 4000 * 4
    assert not any(_mapped(t) for t in (module.c, module.d, module.e))
    assert torch.equal(module.c, copies["big"][9000:]) and torch.equal(module.d, copies["other"])
    assert torch.equal(module.e, copies["small"])


@linux
def test_a_loaded_model_moves_off_its_file_with_the_same_weights_and_ties(tiny_model_dir):
    model = load_model(str(tiny_model_dir), adapter="full")
    assert _mapped_names(model), "transformers read this float32 file as views of its map"
    (file_map,) = {r for r in checkpoint_mappings() if r[0] <= model.lm_head.weight.data_ptr() < r[1]}
    stored = load_file(str(tiny_model_dir / "model.safetensors"))
    assert move_off_checkpoint_files(model) > 0
    assert _mapped_names(model) == []
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied: one Parameter, moved once
    for name, p in model.named_parameters():
        assert torch.equal(p, stored[name]), name
    gc.collect()
    assert file_map not in checkpoint_mappings()  # no view left: the map itself is gone


@linux
@pytest.mark.parametrize(("adapter", "precision"), [("lora", "bf16"), ("lora", "fp32"), ("full", "fp32")])
def test_load_policy_leaves_no_weight_in_the_files_map(tiny_model_dir, adapter, precision):
    run = RunConfig(model=str(tiny_model_dir), adapter=adapter, precision=precision)
    model = load_policy(run, registry.get("dpo"), "cpu", precision)
    assert _mapped_names(model) == []
    stored = load_file(str(tiny_model_dir / "model.safetensors"))
    embed = model.get_input_embeddings().weight
    assert torch.equal(embed, stored["model.embed_tokens.weight"])


@linux
def test_bf16_bases_converted_from_the_map_drop_its_pages(tiny_model_dir, monkeypatch):
    model = load_model(str(tiny_model_dir), adapter="lora")
    dropped = []
    monkeypatch.setattr(checkpoint_memory, "_drop_pages", lambda start, nbytes: dropped.append(nbytes))
    converted = hold_frozen_lora_bases_in(model, torch.bfloat16)
    bases = [p for n, p in model.named_parameters() if n.endswith("base_layer.weight")]
    assert converted == len(bases) == len(dropped) > 0
    assert sorted(dropped) == sorted(p.nelement() * 4 for p in bases)  # the float32 bytes each one left


@linux
def test_a_pytorch_bin_checkpoint_is_moved_off_too(tmp_path, tiny_model_dir):
    """transformers reads a .bin checkpoint with torch.load(mmap=True): a private map of the file as well."""
    source = load_model(str(tiny_model_dir), adapter="full")
    source.config.save_pretrained(tmp_path)
    torch.save({n: p.detach().clone() for n, p in source.named_parameters()}, tmp_path / "pytorch_model.bin")
    model = load_model(str(tmp_path), adapter="full")
    assert _mapped_names(model), "the .bin file's weights are views of its map"
    assert move_off_checkpoint_files(model) > 0
    assert _mapped_names(model) == []
    for (name, p), q in zip(model.named_parameters(), source.parameters(), strict=True):
        assert torch.equal(p, q), name
