"""Weights off the checkpoint file's memory map.

transformers loads a safetensors file whose dtype is the one asked for (and a .bin file, through
``torch.load(mmap=True)``) as views of a private memory map of the file: nothing is read until used, but each page
read stays in the process's resident memory for as long as any weight points into the map, on top of whatever the
run makes of those weights (bf16 copies of frozen bases, a full fine-tune's updated copies). On the Llama-3.2-1B
shape (a 4.9 GB float32 file) a bf16 LoRA run held 3.8 GB of file pages beside 2.2 GB of its own weights after
converting its frozen bases, and trained at 8.5-9 GB resident.

``move_off_checkpoint_files`` copies each weight still in such a map into the process's own memory and, before
letting go of the view, tells the kernel its pages are not needed (``madvise(MADV_DONTNEED)``; in a private file
map a page that is touched again is read again from the file, so no value changes). The resident peak is then the
copies plus one weight; once no view is left, the map itself goes. Linux only (``/proc/self/maps``); elsewhere,
and on accelerators, nothing is in such a map and nothing is done.
"""

from __future__ import annotations

import ctypes
import mmap
import sys

import torch

_MADV_DONTNEED = 4  # Linux's value
_CHECKPOINT_SUFFIXES = (".safetensors", ".bin")  # .bin: torch.load(mmap=True), as transformers reads one


def checkpoint_mappings(maps_text: str | None = None) -> list[tuple[int, int]]:
    """[start, end) of this process's private maps of checkpoint files (the text of /proc/self/maps, read here
    unless given)."""
    if maps_text is None:
        if not sys.platform.startswith("linux"):
            return []
        try:
            with open("/proc/self/maps") as f:
                maps_text = f.read()
        except OSError:
            return []
    ranges = []
    for line in maps_text.splitlines():
        fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
        if len(fields) == 6 and fields[1].endswith("p") and fields[5].rstrip().endswith(_CHECKPOINT_SUFFIXES):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


def whole_pages(start: int, nbytes: int, page: int = mmap.PAGESIZE) -> tuple[int, int]:
    """(first address, length) of the pages lying wholly inside [start, start + nbytes): the pages a tensor shares
    with its neighbours in the file are left alone. Length 0 when there are none."""
    first = -(-start // page) * page
    end = (start + nbytes) // page * page
    return first, max(end - first, 0)


def _span(t: torch.Tensor) -> tuple[int, int]:
    """[first byte, end) of a tensor's own elements (weights are contiguous)."""
    return t.data_ptr(), t.data_ptr() + t.nelement() * t.element_size()


def _in_map(t: torch.Tensor, mappings: list[tuple[int, int]]) -> bool:
    start, end = _span(t)
    return t.device.type == "cpu" and t.is_contiguous() and any(lo <= start and end <= hi for lo, hi in mappings)


def _drop_pages(start: int, nbytes: int) -> None:
    first, length = whole_pages(start, nbytes)
    if length:  # a failure only leaves the pages resident
        ctypes.CDLL(None, use_errno=True).madvise(ctypes.c_void_p(first), ctypes.c_size_t(length), _MADV_DONTNEED)


def replace_data(tensor: torch.Tensor, new: torch.Tensor, mappings: list[tuple[int, int]]) -> None:
    """``tensor.data = new``; if the old data lay in one of ``mappings``, its pages are dropped first (while this
    view still keeps the map alive, so the range cannot belong to anything else yet). ``new`` is made before the
    call, so it holds the current values even of a page written since loading (an adapter merged in place); a
    dropped page read again is the file's, which matters only to a tensor sharing these bytes."""
    old = tensor.data
    if old.numel() and _in_map(old, mappings):
        start, end = _span(old)
        _drop_pages(start, end - start)
    tensor.data = new


def move_off_checkpoint_files(module: torch.nn.Module) -> int:
    """Copy every parameter and buffer of ``module`` that lies in a checkpoint file's map into memory of its own;
    returns how many were moved.

    Weights sharing one Parameter (tied embeddings) move together. Distinct tensors whose bytes overlap (views of
    one stored tensor) are left where they are, so that they stay views of each other."""
    mappings = checkpoint_mappings()
    if not mappings:
        return 0
    tensors = {}  # id -> tensor, each Parameter or buffer object once
    for _, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.numel() and _in_map(t, mappings):
            tensors.setdefault(id(t), t)
    aliased, reach, last = set(), -1, None  # reach: the furthest end of the spans so far, last: whose it is
    for start, end, key in sorted((*_span(t), key) for key, t in tensors.items()):
        if start < reach:
            aliased.update((key, last))
        if end > reach:
            reach, last = end, key
    for key, t in tensors.items():
        if key not in aliased:
            replace_data(t, t.data.clone(), mappings)
    return len(tensors) - len(aliased)
