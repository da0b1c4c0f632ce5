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
    """The model's generation_config (sampling, top_k 20, rep. penalty 1.05) must not leak into an explicit sampler:
    generate decodes greedily over what ``Sampler`` leaves, with the spec's repetition penalty."""
    from mt_core.generate.sampling import eos_ids
    from mt_core.generate.hf import generation_config

    model, tok = _load(tiny_model_dir)
    assert model.generation_config.do_sample and model.generation_config.repetition_penalty == 1.05
    g = generation_config(SamplingSpec(n=2, temperature=1.0, top_p=1.0, max_tokens=5, seed=0), eos_ids(tok),
                          tok.pad_token_id)
    used = model._prepare_generation_config(g)[0]
    assert used.do_sample is False and used.repetition_penalty == 1.0 and used.num_return_sequences == 1


def test_sampler_draws_from_the_warped_distribution_without_multinomial(monkeypatch):
    """One draw per row from softmax(scores / T) restricted to the top-k and the nucleus, seeded by its own generator;
    ``torch.multinomial`` (one exponential per vocabulary entry) is never called."""
    import torch

    from mt_core.generate.hf import Sampler

    monkeypatch.setattr(torch, "multinomial", lambda *a, **k: (_ for _ in ()).throw(AssertionError("multinomial")))
    logits = torch.log(torch.tensor([0.5, 0.25, 0.15, 0.1, 0.0]))
    rows = logits.repeat(20_000, 1)

    def draws(**kw):
        spec = SamplingSpec(n=1, max_tokens=1, seed=kw.pop("seed", 0), **{"temperature": 1.0, "top_p": 1.0, **kw})
        out = Sampler(spec, "cpu")(None, rows.clone())
        assert ((out == 0).sum(-1) == 1).all() and ((out == 0) | (out == -torch.inf)).all()  # a one-hot per row
        return torch.bincount(out.argmax(-1), minlength=5).float() / len(rows)

    assert torch.allclose(draws(), torch.tensor([0.5, 0.25, 0.15, 0.1, 0.0]), atol=0.01)  # never the 0-mass token
    assert torch.allclose(draws(top_k=2), torch.tensor([2 / 3, 1 / 3, 0, 0, 0]), atol=0.01)
    assert torch.allclose(draws(top_p=0.8), torch.tensor([0.5 / 0.9, 0.25 / 0.9, 0.15 / 0.9, 0, 0]), atol=0.01)
    hot = torch.softmax(logits / 0.5, -1)
    assert torch.allclose(draws(temperature=0.5), hot, atol=0.01)
    assert torch.equal(draws(seed=3), draws(seed=3)) and not torch.equal(draws(seed=3), draws(seed=4))
