#!/usr/bin/env bash
# The GPU measurements of issues 8, 16 and 17, for the GPU machine lent through the device tool, in parts
# that each fit one call (at most 600 s). Prepare the wheels here first, then run it there:
#   bash benchmarks/gpu_wheels.sh
#   device run: command "bash benchmarks/gpu_check.sh core", carry [".whl"], timeout_s 540
#   then "bash benchmarks/gpu_check.sh lora paper" (and "vllm" where the image has vllm)
# With no argument it runs every part. It prints (and writes to $OUT/gpu_check.log, else /tmp/gpu_check.log):
#   core  (about 7 min) the fused head's tests on CUDA; the throughput comparison with TRL on a randomly
#         initialised Qwen2.5-0.5B, bf16, and our step split; peak GPU memory of a step against
#         model.micro_batch_size (Qwen2.5's vocabulary) at 64 and 512 tokens; the default config trained
#         for 30 updates (the whole CLI path);
#   lora  the same throughput comparison with LoRA rank 128 (the HF engine's fast decoder, adapters applied as peft does);
#   vllm  VLLMEngine against TRL's colocated vLLM, the engine contract tests on real vLLM, and a 3-update
#         fit with it and the TIS correction (vllm cannot be carried: far over 64 MiB; skipped without it);
#   paper the Qwen2.5-0.5B paper config for 3 updates (benchmarks/paper_step.py): step-time split, peak
#         memory, fraction of LoRA entries moved. On the real Qwen2.5-Coder-0.5B-Instruct weights when
#         $QWEN_GGUF names the GGUF that benchmarks/qwen_gguf.py rejoins (491 MB: more than one call's
#         64 MiB carry, so it must be brought in pieces into an ignored folder over consecutive calls and
#         rejoined there); otherwise on random weights of the same shape (timing and memory only: a random
#         policy earns no reward, so no adapter moves).
set -uo pipefail
cd "$(dirname "$0")/.."
log=${OUT:-/tmp}/gpu_check.log
: >"$log"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl || exit 1
fi
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
status=0
parts=" ${*:-core lora vllm paper} "
want() { [[ $parts == *" $1 "* ]]; }
section() {  # a title, then the command; its output goes to the terminal and the log, its failure is counted
  local title=$1; shift
  echo "== $title: $*" | tee -a "$log"
  local start=$SECONDS
  "$@" 2>&1 | tee -a "$log"
  local code=${PIPESTATUS[0]}
  echo "== exit $code after $((SECONDS - start)) s" | tee -a "$log"
  [ "$code" -eq 0 ] || status=1
}
section versions python3 -c "import torch, transformers, lightning, datasets, trl; print(torch.__version__, \
transformers.__version__, lightning.__version__, trl.__version__, torch.cuda.get_device_name())"
if want core; then
  section "fused head on CUDA" timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_fused_head.py
  section throughput python3 benchmarks/throughput.py --device cuda --dtype bfloat16 \
    --random-init qwen2.5-0.5b --runs 5 --steps 6 --warmup 2
  section "peak memory, 64 tokens" python3 benchmarks/peak_memory.py --device cuda
  section "peak memory, 512 tokens" python3 benchmarks/peak_memory.py --device cuda --tokens 512 --micro 0 16
  section "default config on the GPU" python3 -m rgra_lightning fit --config configs/rgra.yaml \
    --trainer.accelerator=gpu --trainer.max_steps=30 --trainer.logger=false --trainer.callbacks=[] \
    --trainer.enable_checkpointing=false
fi
if want lora; then
  section "throughput, Qwen2.5-0.5B shape + LoRA 128, HF engine" python3 benchmarks/throughput.py \
    --device cuda --dtype bfloat16 --random-init qwen2.5-0.5b --lora 128 --runs 3 --steps 4 --warmup 2 --tokens 64
fi
if want vllm; then
  if python3 -c "import vllm" 2>/dev/null; then
    section "throughput, Qwen2.5-0.5B shape + LoRA 128, vLLM colocated (ours and TRL's)" \
      python3 benchmarks/throughput.py --device cuda --dtype bfloat16 --random-init qwen2.5-0.5b --lora 128 \
      --engine vllm --runs 2 --steps 4 --warmup 2 --tokens 64
    section "vLLM engine contract" timeout 300 python3 -m pytest -q -p no:cacheprovider \
      tests/rollout/test_engine_contract.py tests/rollout/test_vllm.py -k "vllm and not standin"
    section "default config, VLLMEngine, 3 updates" timeout 300 python3 -m rgra_lightning fit \
      --config configs/rgra.yaml --trainer.accelerator=gpu --trainer.max_steps=3 --trainer.callbacks=[] \
      --trainer.enable_checkpointing=false --model.validate_before_training=false --trainer.logger=false \
      --model.rollout=rgra_lightning.rollout.VLLMEngine --model.rollout.gpu_memory_utilization=0.3 \
      --model.loss.sampler_correction_cap=2.0
  else
    echo "== vllm is not installed in this image: VLLMEngine not checked" | tee -a "$log"
  fi
fi
if want paper; then
  if [ -n "${QWEN_GGUF:-}" ] && [ -f "$QWEN_GGUF" ]; then
    section "paper config, real weights" python3 benchmarks/paper_step.py --gguf "$QWEN_GGUF" --steps 3
  else
    echo "== QWEN_GGUF unset or absent: the paper config on random weights (no reward, no adapter movement)" \
      | tee -a "$log"
    section "paper config, random weights" python3 benchmarks/paper_step.py --random-init qwen2.5-0.5b --steps 3
  fi
fi
exit $status
