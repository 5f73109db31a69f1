#!/usr/bin/env bash
# The GPU measurements of issues 8, 16 and 17, for the GPU machine lent through the device tool (15 minutes
# of device time a session, machine start included), sized to fit one call. Prepare the wheels here first:
#   bash benchmarks/gpu_wheels.sh
#   device run: command "GPU_CHECK_SECONDS=540 bash benchmarks/gpu_check.sh", carry [".whl"], timeout_s 600
# Each section has its own time limit, and none starts after GPU_CHECK_SECONDS (default 540) have passed, so
# the log comes back whole. Parts, in the order they run (no argument: all of them):
#   core  the fused head's tests on CUDA; the default config trained for 30 updates (the whole CLI path);
#   profile where the LoRA training loop's rollout time goes (benchmarks/rollout_profile.py: the same
#         engine timed inside the fit, after it and on a fresh policy; one in-loop rollout under
#         torch.profiler, its Chrome trace written to $OUT/rollout_trace.json.gz): issue 17's open question,
#         42 ms a decoding step in the loop against 9.7 ms for the decoder alone on an H100 (before graphs,
#         whose sections' limits add up to more than the whole budget; a trace over 15 MB is split
#         into rollout_trace.json.gz.partNN, since the device tool returns no file over 16 MiB);
#   graphs the HF engine with its decoding steps replayed as CUDA graphs (HFEngine(cuda_graphs=True), never
#         run on a GPU before): its tests on CUDA, the default config trained with it through the CLI
#         (30 updates: val/accuracy against core's), its decoding speed against the plain steps
#         (rollout_speed.py --paths decoder graphed plain), the LoRA 128 comparison with TRL
#         (throughput.py --engine hf-graphs), and the paper config's step with it (paper_step.py);
#   paper the Qwen2.5-0.5B paper config for 3 updates (benchmarks/paper_step.py): step-time split, peak
#         memory, fraction of LoRA entries moved. On the real Qwen2.5-Coder-0.5B-Instruct weights when
#         $QWEN_GGUF names the GGUF that benchmarks/qwen_gguf.py rejoins (491 MB: more than one call's
#         64 MiB carry, so it must be brought in pieces into an ignored folder over consecutive calls and
#         rejoined there); otherwise on random weights of the same shape (timing and memory only: a random
#         policy earns no reward, so no adapter moves);
#   speed the throughput comparison with TRL on a randomly initialised Qwen2.5-0.5B, bf16, and our step
#         split; then with LoRA rank 128; then the HF engine's decoding paths on their own
#         (benchmarks/rollout_speed.py: peft's forward, the fast decoder with the adapters, without them);
#   vllm  VLLMEngine against TRL's colocated vLLM, the engine contract tests on real vLLM, and a 3-update
#         fit with it and the TIS correction (vllm cannot be carried: far over 64 MiB; skipped without it),
#         with .whl/vllm/'s transformers 5.22.2 ahead of .whl's 5.24.0, which vLLM 0.34 does not allow;
#   memory peak GPU memory of a step against model.micro_batch_size (Qwen2.5's vocabulary) at 512 and 64 tokens.
# It prints (and writes to $OUT/gpu_check.log, else /tmp/gpu_check.log) each section's output and time.
set -uo pipefail
cd "$(dirname "$0")/.."
log=${OUT:-/tmp}/gpu_check.log
: >"$log"
deadline=${GPU_CHECK_SECONDS:-540}
install() {  # a target folder, then wheels
  local target=$1; shift
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$target" "$@"
}
all_parts="core profile graphs paper speed vllm memory"
parts=" ${*:-$all_parts} "
want() { [[ $parts == *" $1 "* ]]; }
for part in $parts; do  # a misspelt part would otherwise spend the call on the versions section alone
  [[ " $all_parts " == *" $part "* ]] || { echo "unknown part '$part': choose from $all_parts" | tee -a "$log"; exit 2; }
done
if [ -d .whl ]; then  # pip's errors in the log too
  install /tmp/site .whl/*.whl 2>&1 | tee -a "$log" || exit 1
  if want vllm && [ -d .whl/vllm ]; then install /tmp/site-vllm .whl/vllm/*.whl 2>&1 | tee -a "$log" || exit 1; fi
fi
export PYTHONPATH=$PWD:/tmp/site PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
vllm_path=$PWD:/tmp/site-vllm:/tmp/site  # for the vllm section: a transformers that vLLM 0.34 allows
status=0
section() {  # a time limit in seconds, a title, then the command; output to the terminal and the log
  local limit=$1 title=$2; shift 2
  local left=$((deadline - SECONDS))
  if [ "$left" -lt 30 ]; then
    echo "== $title: skipped, ${GPU_CHECK_SECONDS:-540} s budget spent" | tee -a "$log"
    status=1
    return
  fi
  [ "$limit" -le "$left" ] || limit=$left
  echo "== $title (limit $limit s): $*" | tee -a "$log"
  local start=$SECONDS
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$log"
  local code=${PIPESTATUS[0]}
  pkill -f "benchmarks/(throughput|peak_memory|paper_step|rollout_profile|rollout_speed).py" 2>/dev/null  # a benchmark's children outlive its timeout
  echo "== exit $code after $((SECONDS - start)) s" | tee -a "$log"
  [ "$code" -eq 0 ] || status=1
}
section 60 versions python3 -c "import torch, transformers, lightning, datasets, trl, peft; print(torch.__version__, \
transformers.__version__, lightning.__version__, trl.__version__, peft.__version__, torch.cuda.get_device_name())"
if want core; then
  section 120 "fused head on CUDA" python3 -m pytest -q -p no:cacheprovider tests/test_fused_head.py
  section 150 "default config on the GPU" python3 -m rgra_lightning fit --config configs/rgra.yaml \
    --trainer.accelerator=gpu --trainer.max_steps=30 --trainer.logger=false --trainer.callbacks=[] \
    --trainer.enable_checkpointing=false
fi
if want profile; then
  trace=${OUT:-/tmp}/rollout_trace.json.gz
  section 150 "rollout profile, Qwen2.5-0.5B shape + LoRA 128" python3 benchmarks/rollout_profile.py \
    --device cuda --random-init qwen2.5-0.5b --lora 128 --dtype bfloat16 --tokens 64 --steps 5 --rounds 3 \
    --trace "$trace"
  if [ -f "$trace" ] && [ "$(stat -c %s "$trace")" -gt 15000000 ]; then  # the device tool returns <= 16 MiB a file
    split -d -b 15000000 "$trace" "$trace.part" && rm -f "$trace"
    echo "== $trace split: cat rollout_trace.json.gz.part* >rollout_trace.json.gz" | tee -a "$log"
  fi
fi
if want graphs; then
  section 120 "CUDA graphs: tests" python3 -m pytest -q -p no:cacheprovider tests/rollout/test_cuda_graph.py \
    tests/rollout/test_engine_contract.py -k "cuda_graph or cuda-graphs"
  section 100 "CUDA graphs: default config on the GPU" python3 -m rgra_lightning fit --config configs/rgra.yaml \
    --trainer.accelerator=gpu --trainer.max_steps=30 --trainer.logger=false --trainer.callbacks=[] \
    --trainer.enable_checkpointing=false --model.init_args.rollout.init_args.cuda_graphs=true
  section 100 "CUDA graphs: decoding paths, Qwen2.5-0.5B shape + LoRA 128" python3 benchmarks/rollout_speed.py \
    --device cuda --random-init qwen2.5-0.5b --lora 128 --dtype bfloat16 --autocast --tokens 64 --rounds 3 \
    --paths decoder graphed plain
  section 100 "CUDA graphs: throughput, Qwen2.5-0.5B shape + LoRA 128" python3 benchmarks/throughput.py \
    --device cuda --dtype bfloat16 --random-init qwen2.5-0.5b --lora 128 --runs 1 --steps 3 --warmup 1 --tokens 64 \
    --engine hf-graphs
  section 180 "CUDA graphs: paper config, random weights" python3 benchmarks/paper_step.py \
    --random-init qwen2.5-0.5b --steps 3 --cli=--model.init_args.rollout.init_args.cuda_graphs=true
fi
if want paper; then
  if [ -n "${QWEN_GGUF:-}" ] && [ -f "$QWEN_GGUF" ]; then
    section 180 "paper config, real weights" python3 benchmarks/paper_step.py --gguf "$QWEN_GGUF" --steps 3
  else
    echo "== QWEN_GGUF unset or absent: the paper config on random weights (no reward, no adapter movement)" \
      | tee -a "$log"
    section 180 "paper config, random weights" python3 benchmarks/paper_step.py --random-init qwen2.5-0.5b \
      --steps 3
  fi
fi
if want speed; then
  section 150 "throughput, Qwen2.5-0.5B shape, HF engine" python3 benchmarks/throughput.py --device cuda \
    --dtype bfloat16 --random-init qwen2.5-0.5b --runs 2 --steps 4 --warmup 2
  section 150 "throughput, Qwen2.5-0.5B shape + LoRA 128, HF engine" python3 benchmarks/throughput.py \
    --device cuda --dtype bfloat16 --random-init qwen2.5-0.5b --lora 128 --runs 2 --steps 3 --warmup 1 --tokens 64
  section 100 "decoding paths, Qwen2.5-0.5B shape + LoRA 128" python3 benchmarks/rollout_speed.py --device cuda \
    --random-init qwen2.5-0.5b --lora 128 --dtype bfloat16 --autocast --tokens 64 --rounds 3 \
    --paths forward decoder plain
fi
if want vllm; then
  if [ -d /tmp/site/transformers ] && [ ! -d /tmp/site-vllm/transformers ]; then
    echo "== vllm: skipped: .whl's transformers is newer than vLLM 0.34 allows and .whl/vllm/ is absent" \
      "(bash benchmarks/gpu_wheels.sh)" | tee -a "$log"
    status=1
  elif versions=$(PYTHONPATH=$vllm_path python3 -c "import transformers, vllm
print('vllm', vllm.__version__, 'transformers', transformers.__version__)" 2>&1 | tail -1); then
    echo "== $versions" | tee -a "$log"
    # --runs 1: each run is a fresh process that starts vLLM, and 2 x 2 may not fit the limit
    section 240 "throughput, Qwen2.5-0.5B shape + LoRA 128, vLLM colocated (ours and TRL's)" \
      env PYTHONPATH="$vllm_path" python3 benchmarks/throughput.py --device cuda --dtype bfloat16 \
      --random-init qwen2.5-0.5b --lora 128 --engine vllm --runs 1 --steps 4 --warmup 2 --tokens 64
    section 240 "vLLM engine contract" env PYTHONPATH="$vllm_path" python3 -m pytest -q -p no:cacheprovider \
      tests/rollout/test_engine_contract.py tests/rollout/test_vllm.py -k "vllm and not standin"
    section 240 "default config, VLLMEngine, 3 updates" env PYTHONPATH="$vllm_path" \
      python3 -m rgra_lightning fit --config configs/rgra.yaml --trainer.accelerator=gpu \
      --trainer.max_steps=3 --trainer.callbacks=[] --trainer.enable_checkpointing=false \
      --model.validate_before_training=false --trainer.logger=false \
      --model.rollout=rgra_lightning.rollout.VLLMEngine --model.rollout.gpu_memory_utilization=0.3 \
      --model.loss.sampler_correction_cap=2.0
  else
    echo "== vllm does not import in this image ($versions): VLLMEngine not checked" | tee -a "$log"
  fi
fi
if want memory; then
  section 120 "peak memory, 512 tokens" python3 benchmarks/peak_memory.py --device cuda --tokens 512 --micro 0 16
  section 90 "peak memory, 64 tokens" python3 benchmarks/peak_memory.py --device cuda
fi
exit $status
