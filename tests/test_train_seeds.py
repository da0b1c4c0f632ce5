"""The training seed reaches both random choices of train_lora: the LoRA init and the data order (PROTOCOL §2.13,
``torch.manual_seed(S)`` and ``TrainingArguments(seed=S, data_seed=S)``). Observed inside a real train_lora call:
the LoRA A matrices as the step function first sees them (before any update) and the examples of every step."""
import torch

from mt_core.config import load_study
from mt_core.data.chat import last_turn_example
from mt_core.model import train

MAKE_STEP_FN = train.make_step_fn  # the real one, wrapped below


def _examples(tok, n=16):
    msgs = [[{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": "Answer " * (i % 4 + 1)}]
            for i in range(n)]
    return [last_turn_example(tok, m, 64) for m in msgs]


def _run(tiny_model_dir, monkeypatch, seed: int, ambient: int) -> tuple[dict, list[list[int]]]:
    """(initial LoRA A weights, per-step example indices) of ``train_lora(..., seed=seed)``; the global torch RNG is
    set to ``ambient`` first, so only ``seed`` can make two runs agree."""
    from mt_core.model.load import load_model

    model, tok = load_model(tiny_model_dir)
    examples = _examples(tok)
    index = {id(e): i for i, e in enumerate(examples)}
    seen: dict = {"order": []}
    def recording(peft_model, *a, **k):
        seen["lora_A"] = {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_A" in n}
        step_fn = MAKE_STEP_FN(peft_model, *a, **k)

        def step(batch, n_tok):
            seen["order"].append([index[id(e)] for e in batch])
            return step_fn(batch, n_tok)
        return step

    monkeypatch.setattr(train, "make_step_fn", recording)
    recipe = load_study(profile="tiny").recipes["second_stage"]
    recipe = recipe.model_copy(update={"per_device_batch": 2, "grad_accum": 2, "epochs": 2,
                                       "speed": recipe.speed.model_copy(update={"packing": False})})
    torch.manual_seed(ambient)
    train.train_lora(model, examples, recipe, seed=seed, pad_id=tok.pad_token_id, log=lambda *_: None, max_steps=5)
    return seen["lora_A"], seen["order"]


def test_seed_sets_lora_init_and_data_order(tiny_model_dir, monkeypatch):
    a1, order1 = _run(tiny_model_dir, monkeypatch, seed=1, ambient=100)
    a1_again, order1_again = _run(tiny_model_dir, monkeypatch, seed=1, ambient=200)
    a2, order2 = _run(tiny_model_dir, monkeypatch, seed=2, ambient=100)

    assert a1 and set(a1) == set(a1_again) == set(a2)
    assert len(order1) == 5 and all(len(s) == 4 for s in order1)  # steps of per_device_batch x grad_accum
    # epoch 1 (4 steps) is a permutation of all 16 examples; the second epoch starts over with a new one
    assert sorted(i for s in order1[:4] for i in s) == list(range(16)) and order1[4] != order1[0]

    # the same seed: identical init and order, whatever the global RNG state was
    assert all(torch.equal(a1[n], a1_again[n]) for n in a1)
    assert order1 == order1_again
    # another seed: another init (every A matrix) and another order
    assert all(not torch.equal(a1[n], a2[n]) for n in a1)
    assert order1[:4] != order2[:4] and order1[4:] != order2[4:]  # both epochs
