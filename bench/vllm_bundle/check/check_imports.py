import importlib, sys, traceback
MODS = """vllm
vllm.entrypoints.llm
vllm.lora.request
vllm.inputs
vllm.sampling_params
vllm.v1.engine.core
vllm.v1.engine.core_client
vllm.v1.engine.llm_engine
vllm.v1.engine.input_processor
vllm.v1.engine.output_processor
vllm.v1.engine.detokenizer
vllm.v1.engine.logprobs
vllm.v1.engine.parallel_sampling
vllm.v1.executor
vllm.v1.executor.abstract
vllm.v1.executor.uniproc_executor
vllm.v1.executor.multiproc_executor
vllm.v1.core.sched.scheduler
vllm.v1.core.kv_cache_manager
vllm.v1.core.kv_cache_utils
vllm.v1.structured_output
vllm.v1.worker.gpu_worker
vllm.v1.worker.gpu_model_runner
vllm.v1.worker.gpu_input_batch
vllm.v1.worker.lora_model_runner_mixin
vllm.v1.worker.gpu.model_runner
vllm.v1.sample.sampler
vllm.v1.sample.ops.topk_topp_sampler
vllm.v1.sample.ops.logprobs
vllm.v1.sample.logits_processor
vllm.v1.attention.backends.flash_attn
vllm.v1.attention.backends.fa_utils
vllm.v1.attention.backends.registry
vllm.v1.attention.backends.triton_attn
vllm.vllm_flash_attn
vllm.vllm_flash_attn.flash_attn_interface
vllm.model_executor.models.qwen2
vllm.model_executor.models.registry
vllm.model_executor.model_loader
vllm.model_executor.model_loader.default_loader
vllm.model_executor.model_loader.weight_utils
vllm.model_executor.layers.linear
vllm.model_executor.layers.rotary_embedding
vllm.model_executor.layers.layernorm
vllm.model_executor.layers.logits_processor
vllm.model_executor.layers.vocab_parallel_embedding
vllm.lora.model_manager
vllm.lora.worker_manager
vllm.lora.layers
vllm.lora.peft_helper
vllm.lora.punica_wrapper.punica_gpu
vllm.lora.punica_wrapper.punica_selector
vllm.lora.ops.triton_ops
vllm.distributed.parallel_state
vllm.distributed.device_communicators.cuda_communicator
vllm.compilation.backends
vllm.compilation.wrapper
vllm.compilation.cuda_graph
vllm.platforms.cuda
vllm.tokenizers
vllm.transformers_utils.config
vllm.usage.usage_lib
vllm.utils.flashinfer
vllm.utils.import_utils""".split()
ok, bad = 0, []
for m in MODS:
    try:
        importlib.import_module(m); ok += 1
    except BaseException as e:
        tb = traceback.extract_tb(e.__traceback__)
        where = f"{tb[-1].filename.split('site')[-1]}:{tb[-1].lineno}" if tb else ""
        bad.append((m, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "", where))
try:
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest
    from vllm.inputs import TokensPrompt
    print("TOP-LEVEL: from vllm import LLM, SamplingParams; LoRARequest; TokensPrompt -> OK")
except BaseException as e:
    print("TOP-LEVEL FAILED:", type(e).__name__, e)
print(f"imported OK: {ok}/{len(MODS)}")
for b in bad: print("FAIL", *b, sep=" | ")

# Demonstrate the flashinfer-sampler trap on CUDA (simulated: patch is_cuda -> True)
import os
import vllm.v1.sample.ops.topk_topp_sampler as tks
import vllm.envs as envs
orig = tks.current_platform.is_cuda
tks.current_platform.is_cuda = lambda: True
try:
    os.environ.pop("VLLM_USE_FLASHINFER_SAMPLER", None)
    try:
        print("sampler check, env unset:", tks.flashinfer_sampler_supported())
    except BaseException as e:
        print("sampler check, env unset -> FAILS:", type(e).__name__, e)
    os.environ["VLLM_USE_FLASHINFER_SAMPLER"] = "0"
    print("sampler check, VLLM_USE_FLASHINFER_SAMPLER=0 ->", tks.flashinfer_sampler_supported())
finally:
    tks.current_platform.is_cuda = orig
import importlib.util, vllm
_p = os.path.join(os.path.dirname(vllm.__file__), "vllm_flash_attn", "flash_attn_interface.py")
_spec = importlib.util.spec_from_file_location("vllm.vllm_flash_attn.flash_attn_interface", _p, submodule_search_locations=None)
fai = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(fai)
print("FA2_AVAILABLE", fai.FA2_AVAILABLE, fai.FA2_UNAVAILABLE_REASON, "| FA3_AVAILABLE", fai.FA3_AVAILABLE, fai.FA3_UNAVAILABLE_REASON, "| fa2 .so present:", os.path.exists(os.path.join(os.path.dirname(fai.__file__), "_vllm_fa2_C.abi3.so")), "| fa3 .so present:", os.path.exists(os.path.join(os.path.dirname(fai.__file__), "_vllm_fa3_C.abi3.so")))
from vllm.utils.import_utils import has_deep_gemm
print("has_deep_gemm():", has_deep_gemm())
import xgrammar, tvm_ffi
print("xgrammar", xgrammar.__version__ if hasattr(xgrammar, "__version__") else "?", "tvm_ffi ok")
