"""Host memory on CPU: the C library keeps freed blocks for the next step instead of returning them.

On CPU every tensor comes from the C library's ``malloc``. glibc serves a large block (above a threshold
that starts at 128 KiB and follows the largest block freed, up to 32 MiB) with fresh pages from the kernel,
and hands the top of its heap back to the kernel once more than twice that threshold is free there. A
training step allocates and frees the same large temporaries (activations, logit chunks, LoRA products)
again and again, so many of them were faulted in page by page at every step: on SmolLM2-135M with LoRA
(16 completions x 48 tokens, one thread) 86,000-272,000 page faults and 0.4-3.2 s of kernel time in a
20-22 s step (docs/scaling.md).

``keep_freed_host_memory`` fixes glibc's threshold at 16 MiB and turns the trimming off, so freed blocks
up to that size are reused. Larger blocks, such as a CPU logit chunk's ``[C, V]`` tensors (32 MiB,
``logprobs.CPU_LOGIT_CHUNK_ELEMENTS``), stay mmapped on purpose: kept in the heap, the small tensors a
chunk leaves alive (its log-probs, autograd's records) land in the hole each freed chunk leaves, the
next chunk no longer fits there, and the heap grows by a chunk per chunk: 5.8-6.1 GB resident instead of
0.5 GB for one step of 32 x 256 tokens at Qwen2.5's vocabulary. The price of the rest: the process keeps
the most memory it has held in blocks under 16 MiB. The trainer calls it when it runs on CPU
(``RLModule.setup``). It leaves the allocator alone where the environment configures it (any
``MALLOC_*`` variable, or ``glibc.malloc`` in ``GLIBC_TUNABLES``: how ``benchmarks/peak_memory.py``
measures resident memory) and with C libraries other than glibc.
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt(3) parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 16 << 20  # below a CPU logit chunk's [C, V] blocks (32 MiB), which must stay mmapped
TRIM_THRESHOLD = (1 << 31) - 1  # the largest value mallopt takes (an int): never trim


def allocator_set_by_environment() -> bool:
    """Whether the environment configures glibc's malloc (``MALLOC_*`` or ``glibc.malloc`` tunables)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    return any(name.startswith("MALLOC_") for name in os.environ) or "glibc.malloc" in tunables


def keep_freed_host_memory() -> bool:
    """Make glibc's ``malloc`` keep freed blocks of up to 16 MiB in its heap for reuse, for the rest of the
    process; True if done, False where not glibc or where the environment configures the allocator."""
    if platform.libc_ver()[0] != "glibc" or allocator_set_by_environment():
        return False
    mallopt = ctypes.CDLL("libc.so.6").mallopt
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
