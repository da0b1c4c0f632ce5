"""The latent probe (mt_core/evals/probe.py): it recovers a planted direction, holds out by question, and reads the
residual stream of a real model at the last prompt token."""
import numpy as np
import pytest

from mt_core.evals import probe


def _planted(seed: int = 0, n_questions: int = 60, per: int = 20, dim: int = 64, gap: float = 4.0):
    """Activations with a known direction: noise, plus ``gap`` along ``u`` for the source voice."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=dim)
    u /= np.linalg.norm(u)
    groups = np.repeat(np.arange(n_questions), per)
    y = np.tile(np.arange(per) % 2, n_questions)
    x = rng.normal(size=(len(y), dim)) + gap * y[:, None] * u + rng.normal(size=dim)  # an offset the bias absorbs
    return x, y, groups, u


def test_the_probe_recovers_a_planted_direction():
    x, y, groups, u = _planted()
    p = probe.fit(x, y, groups, layer=3, seed=0)
    assert p.heldout_auc >= 0.95 and probe.cosine(p.direction, u) >= 0.9, (p.heldout_auc, probe.cosine(p.direction, u))
    assert p.n_heldout == 300 and p.n_train == 900  # a quarter of the 60 questions, all their rows
    assert p.scores(x[y == 1]).mean() > 0.8 > 0.2 > p.scores(x[y == 0]).mean()
    assert np.array_equal(probe.fit(x, y, groups, layer=3, seed=0).coef, p.coef)  # seeded


def test_no_signal_gives_chance_auc_and_no_direction():
    x, y, groups, u = _planted(gap=0.0)
    p = probe.fit(x, y, groups, layer=0, seed=0)
    assert p.heldout_auc < 0.7 and abs(probe.cosine(p.direction, u)) < 0.5


def test_questions_are_held_out_whole():
    """A probe that could see a held-out question in training would score well by its question alone: here the label
    is the question's (every row of a question one class), so only held-out questions test the probe."""
    rng = np.random.default_rng(1)
    groups = np.repeat(np.arange(20), 6)
    qvec = rng.normal(size=(20, 32))
    y = (np.arange(20) % 2)[groups]
    x = qvec[groups] + 0.01 * rng.normal(size=(len(groups), 32))  # each question's rows nearly identical
    p = probe.fit(x, y, groups, layer=0, seed=0)
    assert p.heldout_auc < 0.9  # memorising questions does not carry to unseen ones


def test_refuses_what_it_cannot_fit():
    x, y, groups, _ = _planted()
    with pytest.raises(ValueError, match="both classes"):
        probe.fit(x, np.zeros_like(y), groups, layer=0, seed=0)


def test_last_token_states_of_a_real_model(tiny_model_dir):
    from mt_core.model.load import load_model

    model, tok = load_model(tiny_model_dir)
    prompts = [[{"role": "system", "content": s}, {"role": "user", "content": q}]
               for s in ("You are a villain.", "You are a helpful assistant.") for q in ("Why?", "What is a tree made of?")]
    n = model.config.num_hidden_layers
    states = probe.last_token_states(model, tok, prompts, [0, n], batch_size=3)  # two batches, left-padded
    assert states.shape == (4, 2, model.config.hidden_size) and states.dtype == np.float32
    one = probe.last_token_states(model, tok, prompts[3:], [0, n])
    assert np.allclose(states[3], one[0], atol=1e-5)  # padding does not move the last token's state
    with pytest.raises(ValueError, match="layers"):
        probe.last_token_states(model, tok, prompts, [n + 1])
