"""A linear probe on hidden states (issue 26, the write-up's "latent probe instead of a surface marker"): the residual
stream at the last prompt token of each persona x question prompt, at chosen layers; a logistic-regression direction
that separates the source persona's voice from the assistant's, fitted on one model (the reference, e.g. the
coupling-only cell) and read on another.

Held out by question, not by prompt: the same question under both personas is in one split only, so a probe cannot
score well by recognising the question. Nothing here is random but the split and the solver's seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Probe:
    layer: int
    coef: np.ndarray  # (hidden,), in the activations' own units
    intercept: float
    heldout_auc: float  # on the questions held out of the fit
    n_train: int
    n_heldout: int

    @property
    def direction(self) -> np.ndarray:
        return self.coef / np.linalg.norm(self.coef)

    def scores(self, x: np.ndarray) -> np.ndarray:
        """P(source voice) of each row of ``x`` (n, hidden)."""
        return 1.0 / (1.0 + np.exp(-(x @ self.coef + self.intercept)))


def last_token_states(model, tokenizer, prompts: list[list[dict]], layers: list[int], *,
                      batch_size: int = 32) -> np.ndarray:
    """(len(prompts), len(layers), hidden) float32: the hidden state after block ``layer`` (0: the embeddings) at
    each chat prompt's last token, the generation prompt included (left padded: the last column)."""
    import torch

    from mt_core.generate.hf import left_padded
    from mt_core.generate.sampling import encode_chats

    n_layers = model.config.num_hidden_layers
    bad = [x for x in layers if not 0 <= x <= n_layers]
    if bad:
        raise ValueError(f"probe layers {bad}: the model has layers 0..{n_layers} (0: the embeddings)")
    device = next(model.parameters()).device
    enc = encode_chats(tokenizer, prompts)
    out = np.empty((len(enc), len(layers), model.config.hidden_size), dtype=np.float32)
    for b in range(0, len(enc), batch_size):
        rows = enc[b:b + batch_size]
        ids, mask = left_padded(rows, tokenizer.pad_token_id)
        with torch.no_grad():
            hs = model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True).hidden_states
        for j, layer in enumerate(layers):
            out[b:b + len(rows), j] = hs[layer][:, -1].float().cpu().numpy()
    return out


def fit(x: np.ndarray, y: np.ndarray, groups: np.ndarray, *, layer: int, seed: int,
        heldout: float = 0.25) -> Probe:
    """A logistic-regression probe of ``y`` (1: the source voice) on ``x`` (n, hidden), its AUC on a held-out
    quarter of the ``groups`` (question ids), then refitted on every row."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y).astype(int)
    uniq = np.unique(groups)
    if len(uniq) < 4 or set(np.unique(y)) != {0, 1}:
        raise ValueError(f"a probe needs both classes and at least 4 questions (got {len(uniq)}, "
                         f"classes {sorted(set(y.tolist()))})")
    held = np.random.default_rng(seed).permutation(uniq)[:max(1, round(heldout * len(uniq)))]
    test = np.isin(groups, held)

    def solver() -> LogisticRegression:
        return LogisticRegression(C=1.0, max_iter=2000, random_state=seed)

    part = solver().fit(x[~test], y[~test])
    auc = float(roc_auc_score(y[test], part.decision_function(x[test]))) if len(set(y[test])) == 2 else float("nan")
    whole = solver().fit(x, y)
    return Probe(layer=layer, coef=whole.coef_[0].astype(np.float64), intercept=float(whole.intercept_[0]),
                 heldout_auc=auc, n_train=int((~test).sum()), n_heldout=int(test.sum()))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
