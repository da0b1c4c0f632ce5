"""Generation: the sampler and completion types (``sampling``), the transformers engine (``hf``), the vLLM engine
(``vllm_engine``) and ``session``, which opens one engine on a model for a block of generation calls."""
