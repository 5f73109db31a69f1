"""Decoding steps replayed as a CUDA graph: the static-shape step they capture gives the decoder's logits
(here, on the CPU), and where CUDA is present a graphed rollout samples what the plain steps sample."""

import pytest
import torch

from rgra_lightning.models import load_tokenizer
from rgra_lightning.prompt_cache import encode_prompts
from rgra_lightning.rollout import HFEngine, SamplingConfig
from rgra_lightning.rollout import cuda_graph as cuda_graph_module
from rgra_lightning.rollout.llama_decode import LlamaDecoder
from tests.conftest import TINY_POLICY, assert_close_normwise, rounding_rtol
from tests.tiny_models import PROMPTS, decoding_inputs, tiny_policy

# [steps, N]: 6 steps of the 2 x 3 rows of three prompts repeated twice
NEW_TOKENS = torch.tensor([[5, 9, 13, 17, 21, 25], [7, 7, 7, 2, 2, 2], [3, 4, 5, 6, 7, 8]]).T.repeat(1, 2)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU; none here")


def two_decoders(policy, tokenizer, prompts: list[str], padded: bool) -> tuple[LlamaDecoder, LlamaDecoder]:
    """Two decoders of the same prompts (each repeated twice), each with buffers of its own."""
    ids, mask, attention_mask, positions = decoding_inputs(tokenizer, prompts, len(NEW_TOKENS), policy.device)
    assert bool(mask.all()) != padded
    first = positions[:, ids.shape[1] : ids.shape[1] + 1]
    decoders = []
    for _ in range(2):
        _, cache = encode_prompts(policy, ids, mask)
        decoders.append(
            LlamaDecoder(policy, cache, 2, first, attention_mask if padded else None, len(NEW_TOKENS))
        )
    return decoders[0], decoders[1]


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "llama-lora"])
@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("precision", ["float32", "bfloat16", "bf16-autocast"])
def test_the_static_step_gives_the_steps_logits(kind, padded, precision):
    """``static_step`` (the step index a tensor, attention over the whole buffers with the unwritten slots
    masked) gives ``step``'s logits at every step, within rounding: the masked slots add exact zeros to the
    softmax, but the attention kernel may sum in another order, and without padding ``step`` takes SDPA's
    grouped-query path where ``static_step`` groups the query heads under a mask. Float32 weights under
    bfloat16 autocast (``bf16-mixed``) too, where the rotated keys come out float32 and the values
    bfloat16."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    policy = tiny_policy(kind, tokenizer).to(dtype).eval()
    prompts = PROMPTS if padded else ["1+2=", "3*4=", "5-6="]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-autocast")
    with torch.no_grad(), autocast:
        dynamic, static = two_decoders(policy, tokenizer, prompts, padded)
        for step, token in enumerate(NEW_TOKENS):
            expected = dynamic.step(token, step)
            logits = static.static_step(token, torch.tensor(step))
            if precision == "float32":
                # the attention's sums over at most P + T slots in another order, three layers deep
                slots = static.slots.numel()
                assert_close_normwise(logits, expected, rounding_rtol(dtype, 128 * slots), f"step {step}")
            else:
                # within a bfloat16 step or two at the logits' largest magnitude
                eps = torch.finfo(torch.bfloat16).eps
                tolerance = 2 * eps * expected.abs().max().item()
                torch.testing.assert_close(logits, expected, atol=tolerance, rtol=0)


def test_cuda_graphs_are_ignored_off_cuda(monkeypatch):
    """On the CPU ``cuda_graphs=True`` decodes with the plain steps: the same tokens, no graph built."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = tiny_policy("llama", tokenizer)
    monkeypatch.setattr(cuda_graph_module.GraphedStep, "__init__", lambda *args: pytest.fail("a graph"))
    config = SamplingConfig(num_generations=2, max_new_tokens=8)
    rollouts = []
    for graphs in (False, True):
        torch.manual_seed(0)
        rollouts.append(HFEngine(cuda_graphs=graphs).bind(policy, tokenizer).generate(PROMPTS, config))
    assert torch.equal(rollouts[0].completion_ids, rollouts[1].completion_ids)


class InPlaceStep:
    """What a replayed graph does, on the CPU: the static step on fixed token and step buffers, its logits
    written into one buffer that every call returns (a graph's output is overwritten by the next replay)."""

    def __init__(self, decoder: LlamaDecoder, rows: int, device: torch.device) -> None:
        self.decoder = decoder
        self.token = torch.zeros(rows, dtype=torch.long, device=device)
        self.step_index = torch.zeros((), dtype=torch.long, device=device)
        self.logits = decoder.static_step(self.token, self.step_index)  # the warm-up writes slot P
        self.calls = 0

    def __call__(self, token: torch.Tensor, step: int) -> torch.Tensor:
        self.token.copy_(token)
        self.step_index.fill_(step)
        self.logits.copy_(self.decoder.static_step(self.token, self.step_index))
        self.calls += 1
        return self.logits


@pytest.mark.parametrize("stop", ["token", "string"])
@pytest.mark.parametrize("interval", [1, 3])
def test_the_decoding_loop_takes_graph_replays_as_it_takes_steps(monkeypatch, stop, interval):
    """The decoding loop with a graph's semantics (one logits buffer, overwritten at every step; the
    warm-up's write into the buffers) samples what it samples with the plain steps: greedy and seeded,
    finished rows checked every step or every 3, rows ended by a stop token or a stop string."""
    from rgra_lightning.rollout import hf

    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = tiny_policy("llama-lora", tokenizer)
    made: list[InPlaceStep] = []

    def in_place(*args):
        made.append(InPlaceStep(*args))
        return made[-1]

    monkeypatch.setattr(hf, "GRAPH_DEVICES", ("cpu",))
    monkeypatch.setattr(hf, "GraphedStep", in_place)
    stops = {"stop_strings": ["}"]} if stop == "string" else {}
    for greedy in (True, False):
        config = SamplingConfig(num_generations=4, max_new_tokens=16, **stops)
        rollouts, next_draws = [], []
        for graphs in (False, True):
            torch.manual_seed(0)
            engine = HFEngine(finished_check_interval=interval, cuda_graphs=graphs).bind(policy, tokenizer)
            rollouts.append(engine.generate(PROMPTS, config, greedy=greedy))
            next_draws.append(torch.rand(3))  # the generator left where the plain loop leaves it
        assert torch.equal(rollouts[0].completion_ids, rollouts[1].completion_ids), greedy
        assert rollouts[0].completions == rollouts[1].completions
        assert torch.equal(next_draws[0], next_draws[1])
    assert len(made) == 2 and all(step.calls > 0 for step in made)


@CUDA
@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("kind", ["qwen2", "llama-lora"])
def test_a_graphed_rollout_samples_what_the_plain_steps_sample(kind, padded, monkeypatch):
    """On CUDA, in float32, one graph per rollout (captured once, replayed for every step) and the plain
    steps give the same greedy completions and the same seeded samples, with left-padded prompts and
    without."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = tiny_policy(kind, tokenizer).cuda()
    prompts = PROMPTS if padded else ["1+2=", "3*4=", "5-6="]
    captured = []
    original = cuda_graph_module.GraphedStep.__init__

    def counted(self, *args):
        captured.append(1)
        original(self, *args)

    monkeypatch.setattr(cuda_graph_module.GraphedStep, "__init__", counted)
    for greedy in (True, False):
        config = SamplingConfig(num_generations=4, max_new_tokens=16)
        rollouts = []
        for graphs in (False, True):
            torch.manual_seed(0)
            engine = HFEngine(cuda_graphs=graphs).bind(policy, tokenizer)
            rollouts.append(engine.generate(prompts, config, greedy=greedy))
        assert torch.equal(rollouts[0].completion_ids, rollouts[1].completion_ids), greedy
    assert len(captured) == 2  # one graph per graphed rollout


@CUDA
@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("precision", ["float32", "bf16-autocast"])
@pytest.mark.parametrize("kind", ["qwen2", "llama-lora"])
def test_graph_replays_give_the_plain_steps_logits_on_cuda(kind, precision, padded):
    """Teacher-forced, the graph's logits at every step are the plain step's within rounding: both feed
    the same tokens, so a difference cannot compound through sampling. The two may take different
    attention kernels (SDPA's grouped-query path against a masked one), which sum in other orders."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    policy = tiny_policy(kind, tokenizer).cuda().eval()
    prompts = PROMPTS if padded else ["1+2=", "3*4=", "5-6="]
    dtype = torch.bfloat16 if precision == "bf16-autocast" else torch.float32
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype != torch.float32):
        dynamic, static = two_decoders(policy, tokenizer, prompts, padded)
        graphed = cuda_graph_module.GraphedStep(static, NEW_TOKENS.shape[1], torch.device("cuda", 0))
        for step, token in enumerate(NEW_TOKENS.cuda()):
            expected = dynamic.step(token, step).float()
            logits = graphed(token, step).float()
            if dtype == torch.float32:
                # sums of up to 128 features over at most P + T slots, three layers deep, in another order
                rtol = rounding_rtol(dtype, 128 * static.slots.numel())
            else:
                # autocast's multiplies accumulate in float32 and round their outputs to bfloat16 once:
                # the kernels' orders differ below that rounding, so by a few bfloat16 steps, 3 layers deep
                rtol = 8 * torch.finfo(torch.bfloat16).eps
            assert_close_normwise(logits, expected, rtol, f"step {step}")
