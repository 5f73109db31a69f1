"""A decoding step captured once per rollout as a CUDA graph, then replayed for every new token.

At the batch sizes of RL rollouts a decoding step of a small model on a GPU is bound by the host launching
its kernels (about twenty per layer), not by the GPU running them: on an H100, 16 rows of a Qwen2.5-0.5B
shape took 5.7 ms a step without adapters and 9.7 ms with LoRA 128, and 192 rows (the paper config) about
9 ms, while the GPU's share of either is a fraction of that (docs/scaling.md). A CUDA graph records the
kernels of one ``LlamaDecoder.static_step`` and launches them all at once: the token and the step index are
copied into fixed input buffers before each replay, and the logits come out in a fixed buffer.

Opt-in (``HFEngine(cuda_graphs=True)``) and CUDA only. Its tests run where CUDA is present; this module has
not yet run on a GPU, so it is off by default until one has measured it.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from rgra_lightning.rollout.llama_decode import LlamaDecoder


@functools.cache
def _capture_stream(device: torch.device) -> torch.cuda.Stream:
    """One side stream per device for every capture: memory a stream frees is reused by that stream only,
    so a new stream per rollout would strand the warm-up's freed blocks in the allocator's cache."""
    return torch.cuda.Stream(device)


@functools.cache
def _capture_pool(device: torch.device) -> torch.cuda.MemPool:
    """One memory pool per device for every captured graph (its logits and intermediates), kept alive:
    a graph captured into a pool of its own leaves that pool reserved after the graph is gone, until an
    allocation fails and the allocator frees every cached block, the update's too. The price: this pool
    stays reserved at the most any rollout's step has needed (about N x V logits and one layer's
    intermediates), also while the update runs."""
    return torch.cuda.MemPool()


class GraphedStep:
    """``decoder.static_step`` captured in a CUDA graph; called as ``LlamaDecoder.step`` is.

    Args:
        decoder: the rollout's decoder; its buffers and weights must stay where they are while this lives.
        rows: N, the rows it decodes.
        device: the CUDA device of the decoder's buffers.
    """

    def __init__(self, decoder: LlamaDecoder, rows: int, device: torch.device) -> None:
        self.decoder = decoder  # the graph reads its buffers and weights where they are
        self.token = torch.zeros(rows, dtype=torch.long, device=device)
        self.step_index = torch.zeros((), dtype=torch.long, device=device)
        # The step runs under the caller's autocast, without its cache of cast weights: a cast cached
        # during the capture would be freed when the autocast region ends, under the graph's feet.
        autocast = torch.autocast(
            "cuda",
            dtype=torch.get_autocast_dtype("cuda"),
            enabled=torch.is_autocast_enabled("cuda"),
            cache_enabled=False,
        )
        # Captured on a stream of its own, as CUDA graphs require, after one uncaptured run there (lazy
        # initialisation: cuBLAS workspaces, kernel choices; it writes slot P of the buffers, which step 0
        # writes again). Not through ``torch.cuda.graph``, which empties the allocator's cache first: the
        # update would then get its memory from cudaMalloc anew after every rollout.
        stream = _capture_stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.stream(stream), autocast:
            decoder.static_step(self.token, self.step_index)
            stream.synchronize()
            # Only this thread's calls are checked during the capture: a DataLoader's pin-memory thread
            # may call CUDA meanwhile, which the default (global) mode would count against the capture.
            self.graph.capture_begin(pool=_capture_pool(device).id, capture_error_mode="thread_local")
            try:
                self.logits = decoder.static_step(self.token, self.step_index)  # [N, V], rewritten per replay
            finally:
                self.graph.capture_end()
        torch.cuda.current_stream(device).wait_stream(stream)

    def __call__(self, token: Tensor, step: int) -> Tensor:
        """Next-token logits ``[N, V]`` after ``token`` ``[N]`` as new token ``step``: the graph's own
        output buffer, valid until the next call."""
        self.token.copy_(token)
        self.step_index.fill_(step)
        self.graph.replay()
        return self.logits
