"""Two CPU processes (gloo) under DDP and FSDP2 train like one process on the same global batch.

Each process in a multi-process run samples its own prompts with its own RNG stream, so by default no
two world sizes draw the same completions. To compare the distributed machinery (data split, whole
groups per rank, gradient averaging or sharding, metric reduction, sharded checkpoints) and nothing
else, the runs here sample each prompt's G completions with a seed drawn from (prompt, optimizer step):
then rank r draws exactly what the single process draws for its prompts. The training set is as large as
one global batch (4 prompts, all 4 tokens long so no prompt needs padding), so every step of every run sees
the same 4 prompts whatever the shuffling; 2 processes x 2 prompts = 1 process x 4 prompts.

Tolerance (``STEP_RTOL``): a 2-process run sums the same fp32 numbers in another order (per-rank
micro-batches, the gradient all-reduce or reduce-scatter, per-rank means of means), so each step's results
differ from one process's by rounding, and every update carries its rounding into the weights the later
steps read: the metrics of update k may differ by k steps' rounding, norm-wise over the steps, and the
exported weights by as many steps' rounding of the distance training moved them. What is exact stays
exact: the sampled completions, hence rewards, completion lengths and validation accuracy.

The runs go through the CLI in a subprocess (``python -m tests.test_distributed fit ...``), which is
how Lightning relaunches itself once per extra process.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing.util
import os
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from safetensors.torch import load_file
from torch import Tensor
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor
from torch.nn.functional import pad
from torch.utils.data import DataLoader, DistributedSampler

from rgra_lightning import RLModule, cli
from rgra_lightning import module as module_file
from rgra_lightning.distributed import (
    ShardingConfig,
    counted_on_rank,
    decoder_layers,
    reduce_across_ranks,
    reduce_gathered,
    separate_rank_streams,
    shard_model,
    with_distributed_sampler,
)
from rgra_lightning.errors import RUN_REFUSED, ConfigError
from rgra_lightning.export import export_checkpoint
from rgra_lightning.logprobs import logprobs_without_grad, token_logprobs
from rgra_lightning.metrics import TRAIN_REDUCTIONS
from rgra_lightning.models import built_empty, load_causal_lm, load_sequence_classifier, load_tokenizer
from rgra_lightning.rehearsal import scalars
from rgra_lightning.reward_models.scorer import RewardModelScorer
from rgra_lightning.rollout import HFEngine, Rollout, SamplingConfig, hf
from rgra_lightning.rollout.vllm import vllm_weights
from tests.conftest import FAST, ROOT, TINY_POLICY, assert_close_normwise, rounding_rtol
from tests.conftest import sample as sample_rollout
from tests.reward_models.conftest import save_classifier, verifier_plus_reward_model
from tests.test_sft import rl_and_sft_configs
from tests.tiny_models import tiny_policy

TRAIN_PROMPTS = ["3+4", "9-2", "6*7", "8+5"]
# 5: on 2 processes the DistributedSampler repeats the first on rank 1, which must not count it
VAL_PROMPTS = ["2+2", "7*3", "9-9", "5+8", "6+1"]
FSDP2 = {
    "class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
    "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1},
}
# One training step's longest fp32 sums (see ``rounding_rtol``): a weight gradient's, over the global batch's
# tokens, 4 prompts x G = 4 completions x 20 positions (4 prompt tokens, up to 16 new), times the MLP's 384
# features. Measured on one machine: metrics within 8e-6 of one process's at any step, exported weights
# within 9e-5 of the distance they moved; the bound is 3.3e-4 per step.
STEP_RTOL = rounding_rtol(torch.float32, 16 * 20 * 384)
# The KL's floor: k3 = exp(r) - r - 1 cancels per token from terms of size 1 (r near 0), so each run's KL
# is off by up to about 2 eps absolute whatever its size (a 1-update LoRA's, ~1e-12, logs as -1.5e-9 or 0).
KL_ATOL = 4 * torch.finfo(torch.float32).eps
# Rewards (verdicts of identical completions) and lengths are exact: equal, not close.
EXACT_METRICS = (
    "train/reward",
    "train/reward_std",
    "train/completion_length_max",
    "train/rewards/math_verifier",
)


# ------------------------------------------------------------------ the process side (python -m ...)

_current_step = {"step": 0}


_generate = HFEngine.generate


def sample_per_prompt(self, prompts, config, greedy=False) -> Rollout:
    """``HFEngine.generate`` with one call per prompt, seeded from (prompt, optimizer step)."""
    if greedy:
        return _generate(self, prompts, config, greedy=True)
    tokenizer = self.tokenizer
    parts = []
    for prompt in prompts:
        torch.manual_seed(zlib.crc32(f"{prompt}|{_current_step['step']}".encode()))
        parts.append(_generate(self, [prompt], config))
    # Completions stop at their own EOS: right-pad every part to the longest (masked, so no effect).
    width = max(part.input_ids.shape[1] for part in parts)

    def padded(tensors: list[Tensor], value: int, to: int) -> Tensor:
        return torch.cat([pad(t, (0, to - t.shape[1]), value=value) for t in tensors])

    prompt_length = parts[0].prompt_length
    return Rollout(
        input_ids=padded([part.input_ids for part in parts], tokenizer.pad_token_id, width),
        attention_mask=padded([part.attention_mask for part in parts], 0, width),
        completion_mask=padded([part.completion_mask for part in parts], 0, width - prompt_length),
        prompt_length=prompt_length,
        completions=[text for part in parts for text in part.completions],
    )


def run_cli(args: list[str]) -> None:
    training_step = RLModule.training_step

    def seeded_training_step(self, batch, batch_idx):
        _current_step["step"] = self.global_step
        return training_step(self, batch, batch_idx)

    RLModule.training_step = seeded_training_step
    HFEngine.generate = sample_per_prompt
    cli.main(args)


# ------------------------------------------------------------------------------ the test side


def test_step_metrics_are_reduced_over_ranks_each_by_its_own_reduction():
    gathered = torch.tensor([[1.0, 5.0, 2.0, 0.5, 0.0], [3.0, 4.0, 7.0, 0.2, 0.2]])  # 2 ranks x 5 metrics
    # A per-token mean weighs the ranks by their tokens: the completion tokens, or those the loss trains
    # on (rank 0's 100 completion tokens all truncated and masked out: its clip fraction 0 counts for none)
    weights = {"token_mean": torch.tensor([10.0, 30.0]), "trained_token_mean": torch.tensor([0.0, 50.0])}
    kinds = ["mean", "max", "sum", "token_mean", "trained_token_mean"]
    expected = [2.0, 5.0, 9.0, 0.275, 0.2]
    assert reduce_gathered(gathered, kinds, weights).tolist() == pytest.approx(expected)
    one_rank = {kind: weight[1:] for kind, weight in weights.items()}
    assert reduce_gathered(gathered[1:], kinds, one_rank).tolist() == pytest.approx([3.0, 4.0, 7.0, 0.2, 0.2])


def test_counts_of_the_training_step_are_summed_over_ranks():
    """One truncated prompt on one of four ranks is one truncated prompt (it was logged as 0.25)."""
    names = ["train/truncated_prompts", "train/verifier_errors", "train/reward"]
    per_rank = torch.tensor([[1.0, 3.0, 0.5], [0.0, 0.0, 0.7], [0.0, 0.0, 0.1], [0.0, 1.0, 0.3]])
    tokens = torch.ones(4)

    def all_gather(stacked: torch.Tensor) -> torch.Tensor:  # rank 0's values, the others' given
        return torch.cat([stacked.unsqueeze(0), torch.cat([per_rank[1:], tokens[1:, None]], dim=1)])

    mine = dict(zip(names, per_rank[0], strict=True))
    weights = {"token_mean": tokens[0]}
    reduced = reduce_across_ranks(mine, TRAIN_REDUCTIONS, weights, all_gather, torch.device("cpu"))
    assert {name: value.item() for name, value in reduced.items()} == pytest.approx(
        {"train/truncated_prompts": 1.0, "train/verifier_errors": 4.0, "train/reward": 0.4}
    )


@pytest.mark.parametrize("size, ranks", [(5, 2), (41, 2), (7, 3), (1, 2), (2, 5), (8, 4)])
def test_each_problem_counts_on_one_rank_and_the_distributed_samplers_repeats_on_none(size, ranks):
    """The DistributedSampler pads ``size`` problems with repeats to a multiple of ``ranks``: each rank
    evaluates as many, and ``counted_on_rank`` counts every problem exactly once over the ranks."""
    evaluated, counted = 0, []
    for rank in range(ranks):
        indices = list(DistributedSampler(range(size), num_replicas=ranks, rank=rank, shuffle=False))
        assert len(indices) == math.ceil(size / ranks)
        evaluated += len(indices)
        counted += [i for i, mine in zip(indices, counted_on_rank(indices, ranks, rank), strict=True) if mine]
    assert evaluated - size == -size % ranks  # the repeats: 1 of 41 on 2 ranks, 3 of 1 on 4...
    assert sorted(counted) == list(range(size))


def test_the_training_loader_of_several_processes_is_shuffled_with_the_data_seed(monkeypatch):
    """``data.seed`` (the loader's generator) sets the order with several processes as with one;
    ``seed_everything``'s seed only where the loader has no generator."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    ranks = {"num_replicas": 2, "rank": 1}
    seeded = DataLoader(range(10), shuffle=True, generator=torch.Generator().manual_seed(3))
    sampler = with_distributed_sampler(seeded, ranks).sampler
    assert (sampler.seed, sampler.shuffle, sampler.rank) == (3, True, 1)
    assert list(sampler) == list(DistributedSampler(range(10), seed=3, **ranks))
    assert with_distributed_sampler(DataLoader(range(10)), ranks).sampler.seed == 7


def test_sharding_options_are_validated_and_each_decoder_layer_is_a_unit():
    with pytest.raises(ConfigError, match="sharding.param_dtype"):
        ShardingConfig(param_dtype="bf16")
    policy = load_causal_lm(str(TINY_POLICY))
    assert decoder_layers(policy) == list(policy.model.layers)
    assert ShardingConfig(param_dtype="bfloat16").mixed_precision.param_dtype == torch.bfloat16


def _sharded_generation(rank: int, port: int, out: Path) -> None:
    """One of 2 gloo ranks: greedy completions of an FSDP2-sharded policy vs the same policy unsharded, and
    an LM judge's scores sharded vs not; each sharded model also run inside inference mode, as Lightning's
    evaluation loops run on NCCL (on gloo it leaves it off)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    model, tokenizer = load_causal_lm(str(TINY_POLICY)), load_tokenizer(str(TINY_POLICY))
    judge = RewardModelScorer(
        str(TINY_POLICY), kind="judge", judge_template="{prompt}{completion} ", judge_token="1"
    )
    prompts = [["3+4=", "8*9="], ["12*7-5=", "6-6="]][rank]
    config = SamplingConfig(max_new_tokens=12)
    unsharded = sample_rollout(model, tokenizer, prompts, config, greedy=True)
    unsharded_scores = judge.raw_scores(prompts, unsharded.completions)
    mesh = init_device_mesh("cpu", (2,))
    shard_model(model, mesh, ShardingConfig())
    whole_batches = [judge.scored_in_whole_batches]
    shard_model(judge.model, mesh, ShardingConfig())
    whole_batches.append(judge.scored_in_whole_batches)  # a failed batch is not retried alone: collectives
    modes = []  # (gradients on, inference mode) in each decoding loop
    decode = hf._decode

    def recording_modes(*args: object, **kwargs: object) -> Tensor:
        modes.append([torch.is_grad_enabled(), torch.is_inference_mode_enabled()])
        return decode(*args, **kwargs)

    hf._decode = recording_modes
    with torch.inference_mode():
        in_evaluation = sample_rollout(model, tokenizer, prompts, config, greedy=True)
        scores_in_evaluation = judge.raw_scores(prompts, unsharded.completions)
    sharded = sample_rollout(model, tokenizer, prompts, config, greedy=True)
    hf._decode = decode
    reference = load_causal_lm(str(TINY_POLICY))
    shard_model(reference, mesh, ShardingConfig())
    logprobs_without_grad(reference, sharded, 1.0, [slice(None)])
    # A frozen model's root (embeddings, head) is freed after its forwards: no backward would free it.
    frozen_roots_resharded = [
        isinstance(frozen.get_input_embeddings().weight, DTensor) for frozen in (judge.model, reference)
    ]
    # Training still works after generation: the units were resharded and their hooks restored.
    token_logprobs(model, sharded)[0].sum().backward()
    result = {
        "unsharded": unsharded.completions,
        "sharded": sharded.completions,
        "in_evaluation": in_evaluation.completions,
        "decoding_modes": modes,
        "decoding_steps": sharded.completion_ids.shape[1],
        "whole_batches": whole_batches,
        "frozen_roots_resharded": frozen_roots_resharded,
        "grads": all(p.grad is not None for p in model.parameters()),
        "judge": [
            unsharded_scores.tolist(),
            scores_in_evaluation.tolist(),
            judge.raw_scores(prompts, unsharded.completions).tolist(),  # its buffers made in inference mode
        ],
    }
    (out / f"{rank}.json").write_text(json.dumps(result))
    _leave_gloo(rank, out)


def _leave_gloo(rank: int, out: Path) -> None:
    """End a spawned gloo rank of 2 without tearing gloo down. Tearing it down aborted a rank now and then
    ("terminate called without an active exception", SIGABRT: about 1 run in 20 even after a barrier), as
    gloo's threads met a peer or store already gone. After a barrier (every collective done), rank 1 exits
    first, then rank 0, which hosts the store; ``os._exit`` skips the C++ destructors that aborted.

    ``os._exit`` skips multiprocessing's exit handler too, which a rank's normal end runs: it would leave
    the semaphores the rank made (tqdm's lock, from the spawn context a spawned rank inherits) registered
    with the resource tracker shared with pytest, which then warned at shutdown of "4 leaked semaphore
    objects" (2 ranks x 2 tests). So the rank runs that handler itself first: it unlinks them."""
    torch.distributed.barrier()
    if rank != 0:
        (out / f"{rank}.exited").touch()
        multiprocessing.util._exit_function()
        os._exit(0)
    deadline = time.monotonic() + 60
    while not (out / "1.exited").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    multiprocessing.util._exit_function()
    os._exit(0)


def free_port() -> int:
    """A TCP port that the OS reports free now (a fixed or pid-derived port can be taken)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_fsdp2_generation_and_judging_match_unsharded_in_and_out_of_inference_mode(tmp_path):
    """Also: ranks may stop decoding at different steps."""
    port = free_port()
    torch.multiprocessing.spawn(_sharded_generation, args=(port, tmp_path), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    for result in ranks:
        assert result["sharded"] == result["unsharded"] == result["in_evaluation"]
        assert result["decoding_modes"] == [[False, False]] * 2  # no autograd graph kept across the steps
        assert result["grads"]
        unsharded, in_evaluation, after = result["judge"]
        # The same float32 weights, gathered: the same sums, perhaps in another order (abs: log-odds near 0)
        assert in_evaluation == after and in_evaluation == pytest.approx(unsharded, rel=1e-5, abs=1e-5)
        assert result["whole_batches"] == [False, True]
        assert result["frozen_roots_resharded"] == [True, True]
    # The ranks ran different numbers of forwards: no collective may sit inside the decoding loop.
    assert ranks[0]["decoding_steps"] != ranks[1]["decoding_steps"]


def _built_empty_then_sharded(rank: int, port: int, out: Path, cases: list[list]) -> None:
    """One of 2 gloo ranks: models built on the meta device (``built_empty``) on the ranks each case names,
    sharded, against the same model read whole from its files."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    loaders = {"causal_lm": load_causal_lm, "classifier": load_sequence_classifier}
    ids = torch.tensor([[5, 9, 14, 3, 7], [2, 11, 4, 8, 6]])

    def tied(model: torch.nn.Module) -> bool:
        head = model.get_output_embeddings()
        return head is not None and head.weight is model.get_input_embeddings().weight

    result = []
    for kind, path, empty_on, rank0_changes in cases:
        load = loaders[kind]
        whole = load(path)
        with built_empty(rank in empty_on):
            model = load(path)
        tensors = [*model.parameters(), *model.buffers()]
        metas = [tensor.is_meta for tensor in tensors]
        built = "empty" if all(metas) else "read" if not any(metas) else "partly empty"
        if rank0_changes:  # rank 0's weights differ from the files: every rank's shards must hold them
            with torch.no_grad():
                for changed in [whole.parameters(), model.parameters()][: 1 + (rank == 0)]:
                    for parameter in changed:
                        parameter.add_(0.01)
        shard_model(model, init_device_mesh("cpu", (2,)), ShardingConfig())
        sharded = all(isinstance(parameter, DTensor) for parameter in model.parameters())
        gathered = {name: tensor.full_tensor() for name, tensor in model.state_dict().items()}
        weights, whole_buffers = whole.state_dict(), dict(whole.named_buffers())
        with torch.no_grad():
            logits, want = model(ids).logits, whole(ids).logits
        result.append(
            {
                "built": built,
                "sharded": sharded,
                "keys": sorted(gathered) == sorted(weights),
                "weights_equal": all(torch.equal(gathered[name], weights[name]) for name in weights),
                "buffers_equal": all(
                    torch.equal(b, whole_buffers[name]) for name, b in model.named_buffers()
                ),
                "tied": [tied(model)],
                "whole_tied": [tied(whole)],
                "eos": [getattr(m, "generation_config", m.config).eos_token_id for m in (model, whole)],
                "logits_error": ((logits - want).norm() / want.norm()).item(),
            }
        )
    result.append(
        {"read_after_the_block": not any(t.is_meta for t in load_causal_lm(str(TINY_POLICY)).parameters())}
    )
    (out / f"{rank}.json").write_text(json.dumps(result))
    _leave_gloo(rank, out)


def test_models_built_empty_off_rank_zero_are_sharded_with_rank_zeros_weights(tmp_path):
    """Under FSDP2 only rank 0 reads weights (``models.built_empty`` elsewhere): after ``shard_model`` every
    rank holds rank 0's weights, buffers (RoPE's ``inv_freq``, which state dicts leave out) and ties, for a
    tied Llama whose weights rank 0 changed after reading them, an untied Qwen2 with biases and a reward
    classifier, each built empty on rank 1 or on both (rank 0 then reads them as it shards them)."""
    tokenizer = load_tokenizer(str(TINY_POLICY))
    qwen2 = tmp_path / "qwen2"
    tiny_policy("qwen2", tokenizer).save_pretrained(qwen2)
    classifier = save_classifier(tmp_path / "classifier", num_labels=1)
    cases = [
        ["causal_lm", str(TINY_POLICY), [1], True],
        ["causal_lm", str(qwen2), [0, 1], False],
        ["classifier", str(classifier), [0, 1], False],
    ]
    port = free_port()
    torch.multiprocessing.spawn(_built_empty_then_sharded, args=(port, tmp_path, cases), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    for rank, results in enumerate(ranks):
        *per_case, after = results
        assert after == {"read_after_the_block": True}
        for (_, _, empty_on, _), got in zip(cases, per_case, strict=True):
            assert got["built"] == ("empty" if rank in empty_on else "read")
            assert got["sharded"] and got["keys"] and got["weights_equal"] and got["buffers_equal"]
            assert got["tied"] == got["whole_tied"]
            assert got["eos"][0] == got["eos"][1]
            # the same float32 weights, gathered per layer: the same sums, perhaps in another order
            assert got["logits_error"] <= rounding_rtol(torch.float32, 384)  # the widest sum: the tiny MLP's
    assert [case["whole_tied"] for case in ranks[0][:2]] == [[True], [False]]  # both kinds of head checked


def _validate_then_fit(rank: int, out: Path) -> None:
    """One process under ``ModelParallelStrategy``: ``validate`` shards the policy, then a ``fit`` of the same
    module adds the reference (built empty, as under the CLI): at the fit's start, the weights of both."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    from rgra_lightning.data.arithmetic import ArithmeticDataModule
    from rgra_lightning.losses import LossConfig

    os.chdir(out)  # where a validate without a logger writes its samples
    whole = load_causal_lm(str(TINY_POLICY)).state_dict()
    found = {}

    class Checked(Exception):
        """The weights are all this checks: the fit stops there."""

    class WeightsAtFitStart(Callback):
        def on_fit_start(self, trainer: Trainer, module: LightningModule) -> None:
            for name in ("policy", "reference"):
                state = getattr(module, name).state_dict()
                found[name] = all(torch.equal(state[key].full_tensor(), whole[key]) for key in whole)
            raise Checked

    module = RLModule(
        model_path=str(TINY_POLICY),
        loss=LossConfig(beta=0.04),
        validate_before_training=False,
        sampling=SamplingConfig(num_generations=4, max_new_tokens=4),
    )
    data = ArithmeticDataModule(batch_size=4, val_batch_size=4, val_size=4)
    quiet = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False}
    quiet |= {"enable_progress_bar": False, "enable_model_summary": False}
    Trainer(strategy=ModelParallelStrategy(), limit_val_batches=1, **quiet).validate(module, data)
    fit = Trainer(strategy=ModelParallelStrategy(), max_steps=1, callbacks=[WeightsAtFitStart()], **quiet)
    with contextlib.suppress(Checked):
        fit.fit(module, data)
    (out / "found.json").write_text(json.dumps(found))


def test_a_fit_after_a_validate_under_fsdp2_shards_the_reference_it_adds(tmp_path):
    """The policy is sharded by the validate; the fit's reference, built empty, must be sharded (with the
    file's weights) too: left unsharded, Lightning would fill the module's empty tensors with random ones."""
    torch.multiprocessing.spawn(_validate_then_fit, args=(tmp_path,), nprocs=1, join=True)
    assert json.loads((tmp_path / "found.json").read_text()) == {"policy": True, "reference": True}


def _sharded_weight_push(rank: int, port: int, out: Path) -> None:
    """One of 2 gloo ranks: what ``VLLMEngine`` pushes from a policy (full, and LoRA with non-zero updates)
    before and after FSDP2 shards it."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    tokenizer = load_tokenizer(str(TINY_POLICY))
    result = {}
    for kind in ("llama", "llama-lora"):
        policy = tiny_policy(kind, tokenizer)
        whole = {name: tensor.clone() for name, tensor in vllm_weights(policy)}
        shard_model(policy, init_device_mesh("cpu", (2,)), ShardingConfig())
        assert any(isinstance(parameter, DTensor) for parameter in policy.parameters())
        names, plain, error = [], True, 0.0
        for name, tensor in vllm_weights(policy):  # each shard gathered: a collective per tensor
            names.append(name)
            plain = plain and type(tensor) is Tensor and tensor.shape == whole[name].shape
            if plain:  # the largest norm-wise relative error (see ``assert_close_normwise``)
                size = whole[name].norm().clamp(min=torch.finfo(torch.float32).tiny)
                error = max(error, ((tensor - whole[name]).norm() / size).item())
        result[kind] = {"names": names, "whole_names": list(whole), "plain": plain, "error": error}
    (out / f"{rank}.json").write_text(json.dumps(result))
    _leave_gloo(rank, out)


def test_vllm_weight_pushes_gather_fsdp2_shards_whole_in_one_order_on_every_rank(tmp_path):
    """The weights ``VLLMEngine`` pushes from an FSDP2-sharded policy are the unsharded policy's (LoRA
    merged), as whole plain tensors, in the same order on every rank (each gather is a collective)."""
    port = free_port()
    torch.multiprocessing.spawn(_sharded_weight_push, args=(port, tmp_path), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    assert ranks[0] == ranks[1]
    for kind in ("llama", "llama-lora"):
        result = ranks[0][kind]
        assert result["names"] == result["whole_names"] and result["plain"], kind
    # Gathered shards are copies: equal. The LoRA merge runs B @ A on shards, whose sums of rank-4 products
    # another CPU's kernels may take in another order: float32 rounding of 4-term sums (``rounding_rtol``)
    # relative to B A, hence to W + B A too.
    assert ranks[0]["llama"]["error"] == 0.0
    assert ranks[0]["llama-lora"]["error"] <= rounding_rtol(torch.float32, 4)
    assert not any("lora_" in name for name in ranks[0]["llama-lora"]["names"])


@pytest.fixture
def fixed_prompts(small_config, tmp_path):
    """``make(**overrides)``: a small RGRA config on the fixed prompt files, returning its path."""
    for name, prompts in (("train", TRAIN_PROMPTS), ("val", VAL_PROMPTS)):
        lines = [f'{{"question": "{p}", "answer": "{eval(p)}"}}' for p in prompts]  # noqa: S307
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")

    def make(run: str, batch_size: int, val_batch_size: int = 4, **overrides: object) -> Path:
        data = {
            "train_file": str(tmp_path / "train.jsonl"),
            "val_file": str(tmp_path / "val.jsonl"),
            "batch_size": batch_size,
            "val_batch_size": val_batch_size,
        }
        config = small_config(
            "rgra",
            data_module="JsonFilesDataModule",
            **{f"data.init_args.{key}": value for key, value in data.items()},
            **{"model.init_args.sampling.max_new_tokens": 16},
            **{"trainer.logger.init_args.save_dir": str(tmp_path / run)},
            **overrides,
        )
        return config.rename(tmp_path / f"{run}.yaml")

    return make


def launch(command: str, config: Path, *args: str, seeded: bool = True, timeout: float = 300) -> str:
    """Run ``command`` (``fit``, ``validate``...) in a subprocess; its output. ``seeded``: sample with seeds
    from (prompt, step), see the module docstring; else as the CLI does."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    entry = "tests.test_distributed" if seeded else "rgra_lightning"
    line = [sys.executable, "-m", entry, command, "--config", str(config), *args]
    done = subprocess.run(line, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout + done.stderr


def fit(config: Path, *args: str, seeded: bool = True) -> dict[str, dict[int, float]]:
    """Run ``fit`` in a subprocess; the logged scalars as ``{tag: {step: value}}`` (later runs win)."""
    launch("fit", config, *args, seeded=seeded)
    return scalars(config.parent / config.stem)


def two_processes(
    tmp_path: Path, run: str, strategy: object, extra_callbacks: list[dict] | None = None
) -> dict[str, object]:
    """Overrides for 2 CPU processes: a checkpoint callback plus ``extra_callbacks``."""
    checkpoint = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {
            "dirpath": str(tmp_path / run / "checkpoints"),
            "save_last": True,
            "every_n_train_steps": 2,
        },
    }
    callbacks = [checkpoint, *(extra_callbacks or [])]
    return {"trainer.devices": 2, "trainer.strategy": strategy, "trainer.callbacks": callbacks}


def assert_steps_match(
    got: dict[int, float], want: dict[int, float], steps: list[int], tag: str, step_rtol: float = STEP_RTOL
) -> None:
    """``got``'s values of ``tag`` at ``steps`` (update counts) equal ``want``'s where they are exact
    (``EXACT_METRICS``), else within the rounding of as many updates as the last step counts
    (``step_rtol`` each; the KL also ``KL_ATOL`` each), norm-wise over the steps: a loss whose terms cancel
    to near zero at one step is judged at the size of the others, as ``rounding_rtol`` bounds norms."""
    got_values, want_values = [got[step] for step in steps], [want[step] for step in steps]
    if tag in EXACT_METRICS:
        assert got_values == want_values, tag
        return
    actual, expected = (torch.tensor(values, dtype=torch.float64) for values in (got_values, want_values))
    allowed = max(steps) * step_rtol * expected.norm().item()
    if tag == "train/kl":
        allowed += KL_ATOL * math.sqrt(len(steps))
    error = (actual - expected).norm().item()
    assert error <= allowed, f"{tag}: {got_values} vs {want_values}: error {error:.3g} > {allowed:.3g}"


def assert_matches(run: dict[str, dict[int, float]], single: dict[str, dict[int, float]], steps: int) -> None:
    """Per-step training metrics as ``assert_steps_match`` has them against the single-process run's;
    validation accuracy equal."""
    means = ("train/loss", "train/reward", "train/reward_std", "train/kl", "train/grad_norm")
    for tag in (*means, "train/entropy", "train/completion_length_max"):  # a token mean, the max over ranks
        assert len(run[tag]) == steps, f"{tag} logged at steps {sorted(run[tag])}"
        assert_steps_match(run[tag], single[tag], sorted(run[tag]), tag)
    assert len(run["val/accuracy"]) >= 2
    assert run["val/accuracy"] == {step: single["val/accuracy"][step] for step in run["val/accuracy"]}


# Not marked slow: multi-process equivalence is checked on every CI run (about 2 minutes on 2 cores).
def test_ddp_and_fsdp2_match_one_process_and_fsdp2_resumes_from_a_sharded_checkpoint(fixed_prompts, tmp_path):
    single = fit(fixed_prompts("single", batch_size=4, **{"trainer.max_steps": 6}))
    # The comparison means something only if the runs learn: some reward, a loss, a gradient.
    assert max(single["train/reward"].values()) > 0
    assert min(single["train/grad_norm"].values()) > 0
    assert any(loss != 0 for loss in single["train/loss"].values())
    # Each rank's 8 rows (2 prompts x G = 4) go through in micro-batches, their gradients accumulated (DDP
    # all-reduces once, after the last; FSDP2 at every backward): still the one-process update. The DDP run
    # also recomputes its layers in backward (activation checkpointing): the same gradients.
    # It also exports to the default <log dir>/hf_model, which every rank must ask Lightning for.
    export_to_log_dir = {"class_path": "rgra_lightning.callbacks.ExportHuggingFace"}
    ddp = two_processes(tmp_path, "ddp", "ddp", [export_to_log_dir]) | {"model.init_args.micro_batch_size": 4}
    ddp |= {"model.init_args.gradient_checkpointing": True}
    assert_matches(fit(fixed_prompts("ddp", batch_size=2, **ddp)), single, 4)
    assert len(list((tmp_path / "ddp").glob("*/version_0/hf_model/model.safetensors"))) == 1

    micro = {"model.init_args.micro_batch_size": 3}
    fsdp = fixed_prompts("fsdp", batch_size=2, **two_processes(tmp_path, "fsdp", FSDP2), **micro)
    assert_matches(fit(fsdp), single, 4)
    last = tmp_path / "fsdp" / "checkpoints" / "last.ckpt"
    assert last.is_dir(), "FSDP2 should save a sharded checkpoint (a directory of per-rank shards)"
    # Steps 5 and 6 continue from the restored shards and optimizer state exactly as the 6-step run does,
    # and the final export gathers the sharded policy into the same weights the one-process run exports.
    export = {
        "class_path": "rgra_lightning.callbacks.ExportHuggingFace",
        "init_args": {"output_dir": str(tmp_path / "fsdp-hf")},
    }
    resumed = fixed_prompts(
        "fsdp", batch_size=2, **two_processes(tmp_path, "fsdp", FSDP2, extra_callbacks=[export]), **micro
    )
    assert_matches(fit(resumed, "--trainer.max_steps=6", "--ckpt_path", str(last)), single, 6)
    # read from the sharded checkpoint's metadata before Lightning starts: the run logs on in its directory
    assert [path.name for path in (tmp_path / "fsdp").glob("*/version_*")] == ["version_0"]
    sharded_export = load_causal_lm(str(tmp_path / "fsdp-hf")).state_dict()
    single_export = load_causal_lm(str(tmp_path / "hf_model")).state_dict()
    # The gathered export names a tied weight once, as save_pretrained does the model's own
    files = [load_file(tmp_path / export / "model.safetensors").keys() for export in ("fsdp-hf", "hf_model")]
    assert files[0] == files[1] and "lm_head.weight" not in files[0]
    # The sharded checkpoint, read in one process, exports the weights the run's callback gathered
    exported = export_checkpoint(str(resumed), str(last), str(tmp_path / "from-shards"))
    from_shards = load_causal_lm(str(exported)).state_dict()
    assert from_shards.keys() == sharded_export.keys()
    assert all(torch.equal(from_shards[name], sharded_export[name]) for name in from_shards)
    initial = load_causal_lm(str(TINY_POLICY)).state_dict()
    for name, value in single_export.items():  # 6 updates' rounding of how far the 6 updates moved it
        moved, sharded_moved = value - initial[name], sharded_export[name] - initial[name]
        assert_close_normwise(sharded_moved, moved, 6 * STEP_RTOL, name)


@pytest.mark.slow  # about 90 s on the shared 2 cores; DDP with checkpointing (no LoRA) runs in the test above
def test_lora_with_activation_checkpointing_under_ddp_trains_like_one_process_without_it(
    fixed_prompts, tmp_path
):
    """DDP all-reduces the adapters' gradients from hooks that fire during backward, and non-reentrant
    checkpointing recomputes each layer inside that backward: the updates still equal one process's
    without checkpointing (losses and gradient norms within 2 updates' rounding, ``STEP_RTOL``)."""
    lora = {"rank": 4, "alpha": 8.0, "target_modules": ["q_proj", "v_proj"]}
    overrides = {"trainer.max_steps": 2, "model.init_args.lora": lora}
    single = fit(fixed_prompts("single", batch_size=4, **overrides))
    assert min(single["train/grad_norm"].values()) > 0
    checkpointed = overrides | {"model.init_args.gradient_checkpointing": True}
    ddp = fit(fixed_prompts("ddp", batch_size=2, **two_processes(tmp_path, "ddp", "ddp"), **checkpointed))
    for tag in ("train/loss", "train/grad_norm", "train/kl", "train/reward"):
        assert_steps_match(ddp[tag], single[tag], [1, 2], tag)


class RankDependentDraws(Callback):
    """Draws rank + 1 numbers from the global torch stream after each step, as ranks whose completions
    stop at different lengths do: the ranks' RNG states then differ at every checkpoint."""

    def on_train_batch_end(self, trainer: Trainer, *args: object) -> None:
        torch.rand(trainer.global_rank + 1)


def eight_prompts(small_config, tmp_path: Path, run: str, callbacks: list[dict], **overrides: object) -> Path:
    """A small RGRA config (``tmp_path / f"{run}.yaml"``, where ``fit`` reads its logs) training on 8 prompts
    of 4 tokens each with "=" (no padding), checkpointed at every update into ``tmp_path / run``, with
    ``ExactResume``, then ``callbacks``, and ``overrides``."""
    prompts = ["3+4", "9-2", "6*7", "8+5", "2+7", "9*3", "7-4", "5+5"]
    lines = [f'{{"question": "{p}", "answer": "{eval(p)}"}}' for p in prompts]  # noqa: S307
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    checkpoint = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"dirpath": str(tmp_path / run), "save_last": True, "every_n_train_steps": 1},
    }
    settings = {
        "data.init_args.train_file": str(tmp_path / "train.jsonl"),
        "data.init_args.val_file": str(tmp_path / "train.jsonl"),
        "model.init_args.validate_before_training": False,
        "trainer.limit_val_batches": 0,
        "trainer.logger.init_args.save_dir": str(tmp_path / run),
        "trainer.callbacks": [
            checkpoint,
            {"class_path": "rgra_lightning.checkpointing.ExactResume"},
            *callbacks,
        ],
    }
    config = small_config("rgra", data_module="JsonFilesDataModule", **settings | overrides)
    return config.rename(tmp_path / f"{run}.yaml")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", FSDP2], ids=["ddp", "fsdp2"])
def test_a_two_process_run_resumed_mid_epoch_continues_as_an_uninterrupted_one(
    strategy, small_config, tmp_path
):
    """ExactResume under DDP and FSDP2 (a sharded checkpoint), sampling from each rank's own RNG stream as
    the CLI does: 8 prompts, 1 per
    rank per step, so an epoch is 4 steps. A run stopped after step 2 and resumed must train on the prompts
    the uninterrupted run trains on at steps 3-6 (the rest of the epoch, then the next) with the same draws
    on each rank, which its losses and gradient norms show. Lightning alone would restart the epoch and
    restore no RNG; rank 0's RNG states restored on both ranks would change rank 1's samples, since the
    ranks' streams differ (``RankDependentDraws``)."""

    def config(run: str) -> Path:
        draws = {"class_path": "tests.test_distributed.RankDependentDraws"}
        settings = {"data.init_args.batch_size": 1, "trainer.devices": 2, "trainer.strategy": strategy}
        return eight_prompts(small_config, tmp_path, run, [draws], **settings)

    uninterrupted = fit(config("whole"), "--trainer.max_steps=6", seeded=False)
    resumed_config = config("resumed")
    fit(resumed_config, "--trainer.max_steps=2", seeded=False)
    last = tmp_path / "resumed" / "last.ckpt"
    resumed = fit(resumed_config, "--trainer.max_steps=6", "--ckpt_path", str(last), seeded=False)
    # Equal, not close: both runs have 2 processes of the same strategy, so the same sums in the same order,
    # from the same restored weights, optimizer state and RNG states.
    steps = range(1, 7)  # logged at the update count
    for tag in ("train/loss", "train/grad_norm", "train/reward"):
        assert [resumed[tag][step] for step in steps] == [uninterrupted[tag][step] for step in steps], tag
    assert len(set(uninterrupted["train/loss"].values())) == 6  # the steps differ: the check can fail


@pytest.mark.slow  # about 1 minute on the shared 2 cores
def test_token_mean_under_ddp_and_fsdp2_is_the_token_mean_of_the_global_batch(fixed_prompts, tmp_path):
    """``aggregation: token_mean`` divides by the trained tokens of the whole global batch, as one process
    does, though each rank holds another number of them (completions of other lengths): DDP and FSDP2
    average the ranks' gradients, so each rank divides by the mean of the ranks' counts."""
    token_mean = {"model.init_args.loss.aggregation": "token_mean", "trainer.max_steps": 4}
    single = fit(fixed_prompts("single", batch_size=4, **token_mean))
    for name, strategy in (("ddp", "ddp"), ("fsdp", FSDP2)):
        two = fixed_prompts(name, batch_size=2, **two_processes(tmp_path, name, strategy), **token_mean)
        assert_matches(fit(two), single, 4)


@pytest.mark.slow  # about 1 minute on the shared 2 cores
def test_sft_under_ddp_trains_on_the_token_mean_of_the_global_batch(tmp_path):
    """SFTModule's loss is a token mean over the targets: 2 processes x 2 problems, worked solutions of very
    different lengths (so the ranks hold other numbers of target tokens), take the one-process x 4 loss
    and gradient at each of 3 updates, the same problems in each (``ExactResume``'s order), not the mean
    of the two ranks' token means."""
    rl, sft = rl_and_sft_configs(tmp_path, None)
    rows = []
    for a in range(1, 9):  # every other solution 12 times as long
        steps = f"{a} plus 1 is {a + 1}. " * (12 if a % 2 else 1)
        rows.append(json.dumps({"question": f"{a}+1", "answer": f"{steps}\n#### {a + 1}"}))
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
    data = {
        "class_path": "rgra_lightning.JsonFilesDataModule",
        "init_args": {
            "train_file": str(tmp_path / "train.jsonl"),
            "val_file": str(tmp_path / "train.jsonl"),
            "reference_format": "gsm8k_solution",
        },
    }

    def run(name: str, *args: str) -> dict[str, dict[int, float]]:
        named = f"--trainer.logger.init_args.name={name}"
        launch("fit", rl, "--config", str(sft), f"--data={json.dumps(data)}", named, *args, seeded=False)
        return scalars(tmp_path / "runs" / name)

    one = run("one", "--data.init_args.batch_size=4")
    two = run("two", "--trainer.devices=2", "--trainer.strategy=ddp", "--data.init_args.batch_size=2")
    # fp32 sums of a weight gradient over the global batch's target tokens (4 x under 256) x 384 features
    step_rtol = rounding_rtol(torch.float32, 4 * 256 * 384)
    for tag in ("train/loss", "train/grad_norm"):
        assert sorted(two[tag]) == sorted(one[tag]) and len(one[tag]) == 3, tag
        assert_steps_match(two[tag], one[tag], sorted(one[tag]), tag, step_rtol)


ONE_PROCESS_FSDP2 = {
    "class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
    "init_args": {"data_parallel_size": 1, "tensor_parallel_size": 1},
}


@pytest.mark.slow  # about 2 minutes a case on the shared 2 cores
@pytest.mark.parametrize(("strategy", "one_process"), [("ddp", "auto"), (FSDP2, ONE_PROCESS_FSDP2)])
def test_a_two_process_run_resumed_on_one_process_trains_on_the_prompts_it_would_have(
    strategy, one_process, small_config, tmp_path
):
    """A run of 2 processes x 2 prompts stopped mid-epoch (after update 1 of an epoch's 2) resumes on one
    process x 4 prompts (a sharded checkpoint re-sharded under FSDP2) and trains updates 2-4 on the
    prompts the 2-process run trains on (the rest of the epoch, then the next epoch's order): with
    completions seeded by (prompt, update), the rewards are the uninterrupted run's and the losses and
    gradient norms differ by rounding only. Resuming on one process x 2 prompts, half the prompts per
    update, is refused in one line before the fit starts."""

    def config(run: str, processes: int) -> Path:
        settings = {
            "data.init_args.batch_size": 4 // processes,
            "model.init_args.sampling.max_new_tokens": 16,
            "trainer.devices": processes,
            "trainer.strategy": strategy if processes == 2 else one_process,
        }
        return eight_prompts(small_config, tmp_path, run, [], **settings)

    uninterrupted = fit(config("whole", 2), "--trainer.max_steps=4")
    fit(config("resumed", 2), "--trainer.max_steps=1")
    last = str(tmp_path / "resumed" / "last.ckpt")
    halved = ["--config", str(config("resumed", 1)), "--data.init_args.batch_size=2"]
    refused = subprocess.run(
        [sys.executable, "-m", "tests.test_distributed", "fit", *halved, "--ckpt_path", last],
        cwd=ROOT,
        env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error: ")]
    assert refused.returncode == RUN_REFUSED and len(errors) == 1, refused.stderr[-2000:]
    assert (
        "(data.batch_size: 2 on 2 processes (4 prompts per update) in the checkpoint, 2 on 1 (2) now)"
        in errors[0]
    )
    resumed = fit(config("resumed", 1), "--trainer.max_steps=4", "--ckpt_path", last)
    steps = [2, 3, 4]
    rewards = [(resumed["train/reward"][step], uninterrupted["train/reward"][step]) for step in steps]
    assert all(resumed_reward == reward for resumed_reward, reward in rewards), rewards
    for tag in ("train/loss", "train/grad_norm"):
        assert_steps_match(resumed[tag], uninterrupted[tag], steps, tag)
    assert len(set(uninterrupted["train/loss"].values())) == 4  # the steps differ: the check can fail


@pytest.mark.slow
def test_fsdp2_bf16_mixed_precision_with_activation_checkpointing_trains_close_to_fp32(
    fixed_prompts, tmp_path
):
    steps = {"trainer.max_steps": 2}
    single = fit(fixed_prompts("single", batch_size=4, **steps))
    sharding = {"param_dtype": "bfloat16", "reduce_dtype": "float32"}
    overrides = two_processes(tmp_path, "bf16", FSDP2) | steps | {"model.init_args.sharding": sharding}
    overrides |= {"model.init_args.gradient_checkpointing": True}
    mixed = fit(fixed_prompts("bf16", batch_size=2, **overrides))
    # bf16 compute (8-bit mantissa) on fp32 master weights: same samples in the first update (logged at
    # step 1), losses within 5%.
    assert mixed["train/reward"][1] == single["train/reward"][1]
    assert mixed["train/loss"][1] == pytest.approx(single["train/loss"][1], rel=5e-2)
    assert mixed["train/grad_norm"][1] == pytest.approx(single["train/grad_norm"][1], rel=5e-2)


@pytest.mark.slow
def test_reward_model_scores_alike_replicated_under_ddp_and_sharded_under_fsdp2(fixed_prompts, tmp_path):
    verifier = verifier_plus_reward_model(save_classifier(tmp_path / "orm", num_labels=1))
    overrides = {"model.init_args.verifier": verifier, "trainer.max_steps": 2}
    single = fit(fixed_prompts("single", batch_size=4, **overrides))
    for run, strategy in (("ddp", "ddp"), ("fsdp", FSDP2)):
        result = fit(fixed_prompts(run, batch_size=2, **two_processes(tmp_path, run, strategy), **overrides))
        for tag in ("train/rewards/reward_model_scorer", "train/rewards/math_verifier", "train/loss"):
            assert sorted(result[tag]) == sorted(single[tag]), tag
            assert_steps_match(result[tag], single[tag], sorted(single[tag]), tag)


class MarkStep(Callback):
    """Rank 0 creates ``path`` at the end of update ``step``: a sign, for a test, that training runs."""

    def __init__(self, step: int, path: str) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer: Trainer, *args: object) -> None:
        if trainer.global_step == self.step and trainer.is_global_zero:
            Path(self.path).touch()


@pytest.mark.parametrize("strategy", ["ddp", FSDP2], ids=["ddp", "fsdp2"])
def test_sigterm_stops_every_process_after_the_same_update_and_saves_it(strategy, fixed_prompts, tmp_path):
    """SIGTERM to every process of a 2-process fit, as ``timeout`` or a scheduler sends it, each process
    somewhere in its step. Lightning's handler ran a broadcast inside the signal handler and each process
    stopped at its own batch end: an audit's DDP runs hung 4 times out of 4 (``AgreedStop``). All stop
    after the same update now, it is saved, and the exit status is 143."""
    run, started = "sigterm", tmp_path / "started"
    callbacks = [  # no periodic save before the end: the checkpoint is SIGTERM's
        {
            "class_path": "rgra_lightning.checkpointing.PeriodicModelCheckpoint",
            "init_args": {"dirpath": str(tmp_path / run / "checkpoints"), "save_last": True},
        },
        {"class_path": "tests.test_distributed.MarkStep", "init_args": {"step": 2, "path": str(started)}},
    ]
    config = fixed_prompts(
        run,
        batch_size=2,
        **{"trainer.devices": 2, "trainer.strategy": strategy, "trainer.callbacks": callbacks},
        **{"trainer.max_steps": 200, "model.init_args.validate_before_training": False},
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "rgra_lightning", "fit", "--config", str(config)]
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        for _ in range(1200):  # up to 120 s to load and train 2 updates
            if started.exists() or process.poll() is not None:
                break
            time.sleep(0.1)
        time.sleep(0.3)  # into update 3 or 4
        os.killpg(process.pid, signal.SIGTERM)
        output, _ = process.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail("the processes hung after SIGTERM")
    assert process.returncode == 143, output[-3000:]
    last = tmp_path / run / "checkpoints" / "last.ckpt"
    saved = last / "meta.pt" if last.is_dir() else last  # FSDP2: a sharded directory, its state in meta.pt
    step = torch.load(saved, weights_only=True, mmap=not last.is_dir())["global_step"]
    assert step >= 2
    assert f"stopped by SIGTERM after update {step}, saved to {last}" in output


def test_model_parallel_strategy_left_at_auto_says_which_sizes_to_set(fixed_prompts, tmp_path):
    """Lightning's 'auto' gives tensor parallelism each node's devices; the error said to set
    tensor_parallel_size=1, and doing only that failed with a traceback about the sizes' product."""
    strategy = {
        "class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
        "init_args": {"save_distributed_checkpoint": False},
    }
    config = fixed_prompts("auto", batch_size=2, **{"trainer.devices": 2, "trainer.strategy": strategy})
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "rgra_lightning", "fit", "--config", str(config)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert (
        "error: tensor parallelism is not supported: set strategy.init_args.data_parallel_size to the "
        "number of processes (2) and tensor_parallel_size to 1\n" in done.stderr
    )


def test_a_two_process_validate_counts_each_problem_once_as_one_process_does(fixed_prompts, tmp_path):
    """``validate`` on the 5 validation problems, 2 per batch, with 2 sampled completions each (seeded per
    prompt, so both runs draw the same ones). On 2 processes the DistributedSampler gives rank 1 problem 0
    again, alone in its last batch; counted twice it made accuracy 1/6 where one process has 1/5 (an
    audit: 0.1905 against 0.1951 on 41 problems). Every metric equals one process's now, and the ranks'
    samples files hold each problem once, both named in the announcement."""
    options = {"val_batch_size": 2, "model.init_args.evaluation": {"num_samples": 2, "k": [1, 2]}}
    launch("validate", fixed_prompts("single", batch_size=2, **options))
    two = {"trainer.devices": 2, "trainer.strategy": "ddp"}
    output = launch("validate", fixed_prompts("validate", batch_size=2, **two, **options))
    single = scalars(tmp_path / "single")
    assert {"val/accuracy", "val/pass@2", "val/maj@2", "val/completion_length_mean"} <= set(single)
    assert scalars(tmp_path / "validate") == single

    (rank0,) = (tmp_path / "validate").rglob("val_samples.jsonl")
    rank1 = rank0.parent / "val_samples_rank1.jsonl"
    rows = [[json.loads(line) for line in path.open()] for path in (rank0, rank1)]
    greedy = [[row for row in rank if row["decoding"] == "greedy"] for rank in rows]
    prompts = [f"{prompt}=" for prompt in VAL_PROMPTS]
    assert [[row["prompt"] for row in rank] for rank in greedy] == [prompts[0::2], prompts[1::2]]
    assert [row["group"] for row in greedy[1]] == [0, 1]  # each problem's place in its file
    assert [len(rank) for rank in rows] == [3 * 3, 2 * 3]  # a greedy and 2 sampled completions each
    # The check can fail: problem 0 counted twice would change the accuracy.
    correct = [row["correct"] for rank in greedy for row in rank]
    assert single["val/accuracy"][0] == pytest.approx(sum(correct) / 5)
    assert single["val/accuracy"][0] != pytest.approx((sum(correct) + greedy[0][0]["correct"]) / 6)
    beside = "(rank 0's; the other ranks' beside it: val_samples_rank1.jsonl)"
    assert f"completions written to {rank0} {beside}" in output


class SavePredictions(BasePredictionWriter):
    """Writes what ``predict_step`` returned on this rank, a list per batch, to
    ``<directory>/predictions_rank<r>.json``: what ``trainer.predict`` returns there."""

    def __init__(self, directory: str) -> None:
        super().__init__(write_interval="epoch")
        self.directory = Path(directory)

    def write_on_epoch_end(
        self, trainer: Trainer, pl_module: LightningModule, predictions: list, batch_indices: list
    ) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"predictions_rank{trainer.global_rank}.json"
        path.write_text(json.dumps(predictions))


def test_a_two_process_fsdp2_predict_writes_and_returns_each_problem_once_as_one_process_does(
    fixed_prompts, tmp_path
):
    """``predict`` on the 5 problems, 2 per batch, on 2 FSDP2 processes. Lightning's sampler for prediction
    does not pad: rank 0 ran 2 batches and rank 1 one, so rank 0's second batch waited in FSDP2's
    all-gather for a rank that had finished (gloo: ``Connection closed by peer``; NCCL hangs). Both run 2
    batches now, and rank 1's repeat of problem 0 is neither written nor returned: the ranks' samples files
    and predictions hold each problem once, with the one-process greedy completions."""

    def predict(run: str, **options: object) -> list[list[dict]]:
        """Run ``predict``; each rank's predictions, its batches' lists joined."""
        saved = tmp_path / run / "predictions"
        saver = {
            "class_path": "tests.test_distributed.SavePredictions",
            "init_args": {"directory": str(saved)},
        }
        config = fixed_prompts(
            run, batch_size=2, val_batch_size=2, **{"trainer.callbacks": [saver]}, **options
        )
        short = "--model.init_args.sampling.max_new_tokens=4"
        launch(
            "predict", config, short, timeout=120
        )  # a rank waiting for ever in a collective fails the test
        files = sorted(saved.glob("predictions_rank*.json"))
        return [[row for batch in json.loads(path.read_text()) for row in batch] for path in files]

    (single,) = predict("single")
    ranks = predict("fsdp", **{"trainer.devices": 2, "trainer.strategy": FSDP2})
    prompts = [f"{prompt}=" for prompt in VAL_PROMPTS]
    assert [[row["prompt"] for row in rank] for rank in ranks] == [prompts[0::2], prompts[1::2]]

    def by_prompt(rows: list[dict]) -> dict[str, dict]:  # a row's group is its place in its batch or file
        return {
            row["prompt"]: {k: v for k, v in row.items() if k not in ("group", "decoding")} for row in rows
        }

    assert by_prompt(ranks[0] + ranks[1]) == by_prompt(single)
    (rank0,) = (tmp_path / "fsdp").rglob("predict_samples.jsonl")
    paths = (rank0, rank0.parent / "predict_samples_rank1.jsonl")
    written = [[json.loads(line) for line in path.open()] for path in paths]
    assert [[row["group"] for row in rank] for rank in written] == [[0, 1, 2], [0, 1]]
    assert [by_prompt(rank) for rank in written] == [by_prompt(rank) for rank in ranks]


if __name__ == "__main__":
    run_cli(sys.argv[1:])


def test_each_process_samples_from_its_own_random_streams(monkeypatch):
    """Lightning seeds every rank alike: each now reseeds from the run's seed and its rank, the same each
    time, and a single process keeps its streams as seeded."""
    monkeypatch.setenv("PL_GLOBAL_SEED", "5")

    def draws(world_size: int, rank: int) -> Tensor:
        torch.manual_seed(5)
        separate_rank_streams(world_size, rank)
        return torch.rand(4)

    first, second = draws(2, 0), draws(2, 1)
    assert not torch.equal(first, second) and torch.equal(draws(2, 0), first)
    torch.manual_seed(5)
    as_seeded = torch.rand(4)
    assert torch.equal(draws(1, 0), as_seeded)
    monkeypatch.setenv("PL_GLOBAL_SEED", "6")  # another run's seed: other streams on every rank
    assert not torch.equal(draws(2, 0), first)


def test_the_module_separates_the_rank_streams_as_it_is_set_up(small_config, monkeypatch):
    calls = []
    monkeypatch.setattr(module_file, "separate_rank_streams", lambda *args: calls.append(args))
    cli.main(["fit", "--config", str(small_config("rgra", **FAST, **{"trainer.max_steps": 1}))])
    assert calls == [(1, 0)]
