"""Reusable scratch memory for the hidden activations of no-grad forward passes on the CPU.

Sampling a batch of thousands of rows allocates a fresh activation of several MB per hidden layer, and on the CPU
each of those goes back to the operating system when it is freed (glibc returns large blocks), so the next step
pays page faults to get it again. Measured on Pendulum's generator at 7,000 rows: about 460,000 page faults and
15-25 % of the forecast's time.

:func:`scratch` hands out views into two flat buffers per thread, device and dtype, grown to the largest request
seen and kept (separately inside and outside ``torch.inference_mode``). A forward pass alternates between the two (layer i writes one, layer i + 1 reads it and writes the
other), so only the final output needs a fresh tensor. Buffers are per thread, so models used from several threads
at once do not share them; within a thread a forward pass uses them only until it returns.

Small activations are better off fresh: below :data:`MIN_ELEMENTS` elements they come from the allocator's free
lists without page faults, and the scratch path's per-layer Python bookkeeping costs more than it saves (measured
on the learned env's step at 2 threads: the plain path was 7-15 % faster for the GAN up to 512 rows of 256 units
and for the 7-member ensemble at 64 rows; scratch buffers were faster from 1,024 and 128 rows). CUDA has its own
caching allocator, so :func:`wanted` says no for it too, and callers keep their plain path.
"""

from __future__ import annotations

import threading

import torch

_local = threading.local()

# The smallest hidden activation (in elements) worth a scratch buffer; 2^17 = 512 KB of float32.
MIN_ELEMENTS = 1 << 17


def wanted(x: torch.Tensor, elements: int) -> bool:
    """True where a forward pass on ``x`` whose largest hidden activation has ``elements`` elements should use
    scratch buffers: on the CPU, with no gradient recorded, and at least :data:`MIN_ELEMENTS` of them. Never
    while ``torch.compile`` traces the pass: the compiler plans its own buffers, and this module's thread-local
    state would split its graph."""
    return (
        x.device.type == "cpu"
        and not torch.is_grad_enabled()
        and elements >= MIN_ELEMENTS
        and not torch.compiler.is_compiling()
    )


def lower_precision(x: torch.Tensor) -> torch.dtype | None:
    """The dtype ``torch.autocast`` runs matmuls in on ``x``'s device, or None where it is off there.

    Autocast leaves calls with an explicit ``out=`` alone, so a forward pass that writes into scratch buffers
    casts its inputs, weights and buffers to this dtype itself; otherwise its matmuls would stay float32.
    """
    device_type = x.device.type
    return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None


def scratch(slot: int, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor of ``shape`` (contents undefined) in buffer ``slot`` (0 or 1) of this thread, for the
    device and dtype of ``like``. It stays valid until the next request for the same slot in this thread."""
    numel = 1
    for size in shape:
        numel *= size
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = {}
    # tensors made in inference mode cannot be written outside it, so each mode has its own buffers
    key = (slot, like.device, like.dtype, torch.is_inference_mode_enabled())
    buffer = buffers.get(key)
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
    return buffer[:numel].view(shape)


def release() -> None:
    """Free this thread's buffers (they are allocated again on the next request)."""
    _local.buffers = {}
