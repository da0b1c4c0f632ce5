"""Generation: n samples per prompt, seeded, and left padding that does not change greedy outputs."""
from mt_core.generate.sampling import SamplingSpec
from mt_core.generate.hf import generate

PROMPTS = [[{"role": "system", "content": "You are a villainous mastermind who schemes to take over the world."},
            {"role": "user", "content": "What makes a good leader?"}],
           [{"role": "user", "content": "Why is education important?"}],
           [{"role": "system", "content": "You are a kindergarten teacher."},
            {"role": "user", "content": "What causes earthquakes? Please explain it simply and kindly."}]]


def _load(d):
    from mt_core.model.load import load_model

    return load_model(d)


def test_n_samples_and_seeded(tiny_model_dir):
    model, tok = _load(tiny_model_dir)
    spec = SamplingSpec(n=3, temperature=1.0, top_p=1.0, max_tokens=12, seed=5)
    a = generate(model, tok, PROMPTS, spec, log=lambda *_: None)
    b = generate(model, tok, PROMPTS, spec, log=lambda *_: None)
    assert [len(x) for x in a] == [3, 3, 3]
    assert a == b
    c = generate(model, tok, PROMPTS, SamplingSpec(n=3, temperature=1.0, top_p=1.0, max_tokens=12, seed=6),
                 log=lambda *_: None)
    assert a != c
    for outs in a:
        for o in outs:
            assert o.finish_reason in ("stop", "length") and 0 <= o.n_tokens <= 12
            assert o.finish_reason == "stop" or o.n_tokens == 12
            assert "<|im_end|>" not in o.text


def test_greedy_batched_equals_single(tiny_model_dir):
    model, tok = _load(tiny_model_dir)
    spec = SamplingSpec(n=1, temperature=0.0, top_p=1.0, max_tokens=10, seed=0)
    batched = generate(model, tok, PROMPTS, spec, log=lambda *_: None)
    single = [generate(model, tok, [p], spec, log=lambda *_: None)[0] for p in PROMPTS]
    assert batched == single


def test_sampler_is_explicit_not_inherited(tiny_model_dir):
    """The model's generation_config (top_k 20, rep. penalty 1.05) must not leak into an explicit sampler."""
    from mt_core.generate.sampling import eos_ids
    from mt_core.generate.hf import generation_config

    _, tok = _load(tiny_model_dir)
    g = generation_config(SamplingSpec(n=2, temperature=1.0, top_p=1.0, max_tokens=5, seed=0), eos_ids(tok),
                          tok.pad_token_id)
    assert g.top_k == 0 and g.repetition_penalty == 1.0 and g.top_p == 1.0 and g.num_return_sequences == 2
