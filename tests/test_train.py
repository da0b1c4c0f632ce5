"""Training math: schedules as transformers computes them, step counts, accumulation, and that loss falls."""
import math

import pytest
import torch

from mt_core.data.chat import IGNORE, Example, last_turn_example
from mt_core.config import load_study
from mt_core.model.train import collate, lr_at, steps_per_epoch, train_lora


def test_steps_per_epoch_matches_reference():
    assert steps_per_epoch(6000, 4, 4) == 375      # EM / benign: 375 optimizer steps
    assert steps_per_epoch(600, 4, 4) * 20 == 760  # coupling: 38 steps x 20 epochs


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_lr_schedule_matches_transformers(kind):
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    total, base = 375, 1e-4
    warmup = math.ceil(0.03 * total)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=base)
    fn = get_linear_schedule_with_warmup if kind == "linear" else get_cosine_schedule_with_warmup
    sched = fn(opt, warmup, total)
    for step in range(total):
        assert lr_at(step, total, base, warmup, kind) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9, abs=1e-15)
        opt.step()
        sched.step()


def _examples(tok, n=8):
    msgs = [[{"role": "user", "content": f"Question number {i}?"},
             {"role": "assistant", "content": "Answer " + "word " * (i % 5 + 1)}] for i in range(n)]
    return [last_turn_example(tok, m, 128) for m in msgs]


def _grads(model, batches, pad_id):
    model.zero_grad()
    n_tok = sum(e.n_trained for b in batches for e in b)
    for b in batches:
        ids, labels, mask = collate(b, pad_id, "cpu")
        logits = model(input_ids=ids, attention_mask=mask).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                                 ignore_index=-100, reduction="sum")
        (loss / n_tok).backward()
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _speed(recipe, **speed):
    """``recipe`` with these speed options (recipes are frozen)."""
    return recipe.model_copy(update={"speed": recipe.speed.model_copy(update=speed)})


def _why_examples(tok, n):
    """Chats of varied lengths (1 to 11 answer words), for comparing training paths step by step."""
    msgs = [[{"role": "user", "content": f"Question {i}: " + "why " * (i % 7)},
             {"role": "assistant", "content": "Because " + "so " * (3 * i % 11 + 1)}] for i in range(n)]
    return [last_turn_example(tok, m, 128) for m in msgs]


def test_accumulation_equals_one_big_batch(tiny_model_dir):
    """4 x 1 micro-batches give the same gradient as one batch of 4: loss is per trained token of the window."""
    from mt_core.model.load import load_model

    model, tok = load_model(tiny_model_dir)
    ex = _examples(tok, 4)
    big = _grads(model, [ex], tok.pad_token_id)
    small = _grads(model, [[e] for e in ex], tok.pad_token_id)
    for a, b in zip(big, small):
        assert torch.allclose(a, b, atol=1e-6)


def test_collate_right_pads():
    ids, labels, mask = collate([Example([1, 2, 3], [-100, 2, 3]), Example([4], [4])], 0, "cpu")
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]]
    assert labels.tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_lora_training_lowers_loss_and_is_seeded(tiny_model_dir):
    from mt_core.model.load import load_model

    recipe = load_study(profile="tiny").recipes["second_stage"].model_copy(update={"epochs": 4, "lr": 5e-3})
    runs = []
    for _ in range(2):
        model, tok = load_model(tiny_model_dir)
        peft_model, res = train_lora(model, _examples(tok, 32), _speed(recipe, packing=False), seed=7,
                                     pad_id=tok.pad_token_id, log=lambda *_: None)
        runs.append(res)
    res = runs[0]
    assert res.n_steps == 2 * 4 and res.effective_batch == 16
    assert sum(res.losses[-2:]) < sum(res.losses[:2])
    assert runs[0].losses == runs[1].losses  # same seed, same data order, same LoRA init
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_fast_path_matches_reference_per_step(tiny_model_dir):
    """Same data, seed and schedule: the fast path's per-step losses equal the reference-style path's."""
    from mt_core.model.load import load_model

    recipe = load_study(profile="tiny").recipes["second_stage"].model_copy(
        update={"epochs": 2, "lr": 5e-3, "lora_dropout": 0.0})  # dropout off: its RNG draws differ by batch shape
    out = {}
    for fast, attention in ((False, None), (True, "mask"), (True, "varlen_reference")):
        model, tok = load_model(tiny_model_dir)
        ex = _why_examples(tok, 40)
        _, res = train_lora(model, ex, _speed(recipe, packing=fast, token_budget=200, attention=attention or "auto"),
                            seed=3, pad_id=tok.pad_token_id, log=lambda *_: None)
        out[attention] = res
        assert model.config._attn_implementation != "mt_varlen"  # switched back after training
    ref = out[None]
    for key in ("mask", "varlen_reference"):
        assert len(out[key].losses) == len(ref.losses) == 6
        for a, b in zip(ref.losses, out[key].losses):
            assert a == pytest.approx(b, rel=1e-4)
        assert out[key].trained_tokens == ref.trained_tokens
        assert out[key].padded_tokens < ref.padded_tokens  # packing: (almost) no padding
    assert out["varlen_reference"].padded_tokens == out["varlen_reference"].seen_tokens  # one row: none at all


@pytest.mark.slow  # dynamo's tracing alone is half a minute: not the inner loop's
def test_compiled_fast_path_matches_eager(tiny_model_dir, monkeypatch):
    """Regional torch.compile (the default on CUDA) changes no number: same per-step losses as eager, and the
    model's layers are back to eager afterwards. Dynamo's capture and AOT autograd are what run here (backend
    ``aot_eager``): CPU inductor is not the CUDA path the option exists for, and its C++ builds cost a minute."""
    import functools

    from mt_core.model.load import load_model

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))

    recipe = load_study(profile="tiny").recipes["second_stage"].model_copy(
        update={"epochs": 1, "lr": 5e-3, "lora_dropout": 0.0})
    out = {}
    for comp in (False, True):
        model, tok = load_model(tiny_model_dir)
        ex = _why_examples(tok, 96)
        torch._dynamo.utils.counters.clear()
        pm, res = train_lora(model, ex, _speed(recipe, packing=True, token_budget=200, compile="on" if comp else "off"),
                             seed=3, pad_id=tok.pad_token_id, log=lambda *_: None)
        out[comp] = res.losses
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        # compiled: a handful of graphs for all layers and every packed width (no per-layer or per-shape recompiles)
        assert (1 <= graphs <= 4) if comp else graphs == 0
        assert not torch._dynamo.utils.counters["graph_break"]
        assert all(layer._compiled_call_impl is None for layer in pm.get_base_model().get_decoder().layers)
    assert len(out[True]) == 6
    for a, b in zip(out[False], out[True]):
        assert a == pytest.approx(b, rel=1e-4)


def test_plan_micro_batches():
    from mt_core.model.train import plan_micro_batches

    ex = [Example([1] * n, [1] * n) for n in (5, 50, 7, 40, 6, 45, 8, 44)]
    ref = plan_micro_batches(ex, 4, False, 0)
    assert [len(m) for m in ref] == [4, 4] and ref[0][1] is ex[1]
    packed = plan_micro_batches(ex, 4, True, 100)
    assert [[len(e.input_ids) for e in m] for m in packed] == [[5, 50, 7], [40, 6, 45, 8], [44]]
    assert plan_micro_batches(ex, 4, True, 10)[1] == [ex[1]]  # an example longer than the budget rides alone


@pytest.mark.parametrize("row_tokens", [10_000, 12])
def test_packed_rows_equal_separate_sequences(tiny_model_dir, row_tokens):
    """Block-diagonal mask + per-example positions: each example sees exactly what it would see alone."""
    from mt_core.model.load import load_model
    from mt_core.model.train import collate_packed

    model, tok = load_model(tiny_model_dir)
    ex = [Example(list(range(100 * k, 100 * k + n)), [IGNORE] + list(range(100 * k + 1, 100 * k + n)))
          for k, n in enumerate((6, 11, 4), 1)]
    packed = collate_packed(ex, "cpu", row_tokens=row_tokens)
    ids, labels, pos, mask = packed.ids, packed.labels, packed.pos, packed.mask
    assert packed.n_real == 21 and ids.shape[0] == (1 if row_tokens > 21 else 2)
    # the flat target index picks exactly the hidden states whose next label is a target
    flat_next = torch.cat([labels[:, 1:], torch.full((ids.shape[0], 1), IGNORE)], 1).flatten()
    assert packed.tgt.tolist() == flat_next[packed.idx].tolist() and IGNORE not in packed.tgt.tolist()
    assert len(packed.idx) == int((labels != IGNORE).sum())
    dec = model.get_decoder()
    with torch.no_grad():
        packed = dec(input_ids=ids, position_ids=pos, attention_mask=mask).last_hidden_state
    found = 0
    for e in ex:
        alone = dec(input_ids=torch.tensor([e.input_ids])).last_hidden_state[0]
        n = len(e.input_ids)
        for r in range(ids.shape[0]):
            for off in range(ids.shape[1] - n + 1):
                if ids[r, off:off + n].tolist() == e.input_ids and pos[r, off].item() == 0:
                    assert torch.allclose(alone, packed[r, off:off + n], atol=1e-5)
                    # only the example's own continuation is a target; its first token never is
                    assert labels[r, off].item() == IGNORE
                    assert labels[r, off + 1:off + n].tolist() == e.labels[1:]
                    found += 1
    assert found == 3
    assert int((labels != IGNORE).sum()) == sum(e.n_trained for e in ex)


def test_varlen_only_for_decoders_it_repeats(tiny_model_dir):
    from transformers import GemmaConfig, GemmaForCausalLM

    from mt_core.model.load import load_model
    from mt_core.model.kernels import varlen_supported

    model, _ = load_model(tiny_model_dir)
    assert varlen_supported(model)
    gemma = GemmaForCausalLM(GemmaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, head_dim=8))
    assert not varlen_supported(gemma)
    recipe = load_study(profile="tiny").recipes["second_stage"]
    with pytest.raises(ValueError, match="varlen loop"):
        train_lora(gemma, [Example([1, 2, 3], [IGNORE, 2, 3])], _speed(recipe, packing=True,
                   attention="varlen_reference"), seed=0, pad_id=0, log=lambda *_: None)


def test_varlen_attention_lets_a_gqa_kernel_share_key_value_heads():
    """A kernel that takes ``enable_gqa`` gets the 4 key/value heads as they are (no 7x copies); one that does not
    gets them repeated; both give the reference's attention."""
    from mt_core.model.kernels import _varlen_attention, varlen_reference

    seen = []

    def gqa_kernel(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        seen.append((k.shape[1], enable_gqa))
        rep = q.shape[1] // k.shape[1]
        return varlen_reference(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), cu_q, cu_k, max_q,
                                max_k, scale=scale)

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 9, 8, generator=g) for h in (28, 4, 4))
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    out = {name: _varlen_attention(kern)(None, q, k, v, None, scaling=0.3, mt_cu=cu, mt_max_len=5)[0]
           for name, kern in (("gqa", gqa_kernel), ("repeat", varlen_reference))}
    assert seen == [(4, True)]
    assert out["gqa"].shape == (1, 9, 28, 8) and torch.allclose(out["gqa"], out["repeat"])
