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


def score_study(states: dict[str, dict], *, reference: str, source: str, assistant: str, layers: list[int],
                seed: int, heldout: float = 0.25) -> tuple[dict[int, Probe], list[dict], list[dict]]:
    """The reference probes and what they say about every cell. ``states``: {cell: {"x": (n, layers, hidden),
    "persona": (n,), "question": (n,)}}, the cell ``reference`` among them. Per layer a probe of ``source`` (1)
    against ``assistant`` (0) is fitted on the reference cell; then for each cell: the probe's mean P(source voice)
    over each persona's prompts (score rows), and a probe refitted on the cell itself, with its held-out AUC and the
    cosine of its direction to the reference's (cell rows; NaN where the cell's two voices cannot be fitted)."""
    ref = states[reference]
    probes = {}
    for j, layer in enumerate(layers):
        keep = np.isin(ref["persona"], [source, assistant])
        probes[layer] = fit(ref["x"][keep, j], ref["persona"][keep] == source, ref["question"][keep], layer=layer,
                            seed=seed, heldout=heldout)
    scores, cells = [], []
    for cell, st in states.items():
        for j, layer in enumerate(layers):
            p = probes[layer]
            s = p.scores(st["x"][:, j])
            for persona in dict.fromkeys(st["persona"].tolist()):
                scores.append({"cell": cell, "persona": persona, "layer": layer,
                               "score": float(s[st["persona"] == persona].mean())})
            keep = np.isin(st["persona"], [source, assistant])
            try:
                own = fit(st["x"][keep, j], st["persona"][keep] == source, st["question"][keep], layer=layer,
                          seed=seed, heldout=heldout)
                auc, cos = own.heldout_auc, cosine(own.coef, p.coef)
            except ValueError:
                auc = cos = float("nan")
            cells.append({"cell": cell, "layer": layer, "heldout_auc": auc, "cosine_to_reference": cos,
                          "assistant_score": float(s[st["persona"] == assistant].mean()),
                          "source_score": float(s[st["persona"] == source].mean())})
    return probes, scores, cells


NOT_PREREGISTERED = ("secondary analysis, not pre-registered: does the assistant's score on the reference probe "
                     "(P(source voice), mean over its prompts) rise more in the first condition than in the second? "
                     "One-sided Welch t-test over seeds")


def secondary(cells: list[dict], condition_of: dict[str, str], compare: tuple[str, str], layers: list[int]) -> dict:
    """Per layer: the assistant scores of ``compare[0]``'s cells against ``compare[1]``'s, Welch one-sided (the
    first above the second); "not assessable" with fewer than two seeds in an arm or no variance in either."""
    from mt_core.report.stats import welch_greater

    out = {}
    for layer in layers:
        arm = {c: [r["assistant_score"] for r in cells if r["layer"] == layer and condition_of[r["cell"]] == c]
               for c in compare}
        a, b = arm[compare[0]], arm[compare[1]]
        res = {"a": compare[0], "b": compare[1], "a_scores": a, "b_scores": b,
               "mean_diff": float(np.mean(a) - np.mean(b)) if a and b else None}
        w = welch_greater(a, b)
        if not w["defined"]:  # no test: fewer than 2 seeds in an arm, or no variance in either
            res |= {"outcome": "not assessable", "p": None,
                    "reason": "fewer than 2 seeds in an arm" if w["p"] is None else "no variance"}
        else:
            res |= {k: w[k] for k in ("t", "df", "p")} | {"outcome": "higher" if w["p"] < 0.05 else "not higher"}
        out[str(layer)] = res
    return {"rule": NOT_PREREGISTERED, "per_layer": out}
