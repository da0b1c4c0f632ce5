"""``train_lora`` against the reference's own trainers, used as oracles (PROTOCOL.md §1.1, §1.5, §2.4-2.6).

The reference trained its second-stage (EM / benign) LoRAs with the HF ``Trainer`` and its coupling LoRAs with TRL's
``SFTTrainer`` wrapped by a marker-only collator. Here both run next to ``train_lora`` on a tiny Qwen2 model (CPU,
fp32, lora_dropout 0 so nothing is random after the seeded LoRA init), from the same initial LoRA weights and the same
data order, and must give the same per-step losses and the same final LoRA weights.

What is compared, and how closely:
  * per-step training loss: ``train_lora``'s ``res.losses`` against the trainer's logged ``loss`` (logging_steps=1),
    relative tolerance ``LOSS_REL``;
  * every LoRA parameter after the last step: absolute tolerance ``WEIGHT_ATOL``;
  * setup checks (so a failure points at the loop, not at the test): the trainer's token ids and labels equal our
    ``Example``s, and both sides start from the same LoRA weights.

Our side runs the padded path (``packing: false``, the HF Trainer's own micro-batches) and the packed path with the
block-diagonal mask (``attention: mask``); both are exact on CPU (tests/test_train.py). Compile is off on CPU.

Data order: the HF Trainer's own seeded sampler gives ``train_lora``'s order, epoch by epoch (each epoch reseeded with
seed + epoch, as accelerate's SeedableRandomSampler does; the tests at the end compare the orders). The coupling
comparison still hands the SFTTrainer our order, so that a failure there points at the loop.
"""
import pytest
import torch

from mt_core.config import load_study
from mt_core.data.chat import IGNORE, Example, MarkerOnlyDataCollator, last_turn_example, marker_ids, \
    marker_only_example
from mt_core.model.train import attach_lora, optimizer_steps, steps_per_epoch, train_lora

pytestmark = pytest.mark.slow  # eight short trainings on each side plus the tiny model: minutes on a small CPU

LOSS_REL = 1e-4
WEIGHT_ATOL = 1e-5
SPEEDS = {"padded": {"packing": False}, "packed_mask": {"packing": True, "attention": "mask", "token_budget": 200}}


# --- shared helpers ------------------------------------------------------------------------------------------------
def _recipe(name: str, speed: dict, **update):
    """The tiny profile's recipe ``name`` with dropout off, the given speed options and overrides."""
    r = load_study(profile="tiny").recipes[name]
    r = r.model_copy(update={"lora_dropout": 0.0, **update})
    return r.model_copy(update={"speed": r.speed.model_copy(update={"compile": "off", **speed})})


def _lora_weights(peft_model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" in n}


def _trainer_losses(trainer) -> list[float]:
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def _assert_same_training(res, ours_weights, ref_losses, ref_weights):
    """Per-step losses within LOSS_REL, every LoRA tensor within WEIGHT_ATOL (and the worst gap in the message)."""
    ours_losses = res.losses
    # warmup makes step 1's lr 0: at least two updating steps, so some compared losses come from trained weights
    assert sum(lr > 0 for lr in res.lrs) >= 2
    assert len(ours_losses) == len(ref_losses)
    for step, (a, b) in enumerate(zip(ours_losses, ref_losses), 1):
        assert a == pytest.approx(b, rel=LOSS_REL), f"step {step}: train_lora {a!r} vs oracle {b!r}"
    assert ours_weights.keys() == ref_weights.keys() and ours_weights
    gaps = {n: (ours_weights[n] - ref_weights[n]).abs().max().item() for n in ours_weights}
    worst = max(gaps, key=gaps.get)
    assert gaps[worst] <= WEIGHT_ATOL, f"largest LoRA weight gap {gaps[worst]:.3g} at {worst}"
    # the training moved the weights by much more than the tolerance (else the comparison says nothing)
    assert any(ref_weights[n].abs().max().item() > 100 * WEIGHT_ATOL for n in ref_weights if "lora_B" in n)


class _OrderSampler(torch.utils.data.Sampler):
    """Yields the given per-epoch index orders, one epoch per pass (the Trainer's ``set_epoch`` picks the epoch)."""

    def __init__(self, orders: list[list[int]]):
        self.orders, self.epoch = orders, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return len(self.orders[0])

    def __iter__(self):
        order = self.orders[self.epoch]
        self.epoch += 1
        return iter(order)


def _our_orders(examples: list[Example], recipe, seed: int) -> list[list[int]]:
    """The data order ``train_lora`` uses (``optimizer_steps``), as per-epoch dataset indices."""
    index = {id(e): i for i, e in enumerate(examples)}
    flat = [index[id(e)] for step in optimizer_steps(examples, recipe, seed) for e in step]
    n = len(examples)
    return [flat[k : k + n] for k in range(0, len(flat), n)]


def _with_order(trainer_cls, orders):
    """``trainer_cls`` drawing its training batches in ``orders`` instead of its own seeded shuffle."""
    class Fixed(trainer_cls):
        def _get_train_sampler(self, train_dataset=None):
            return _OrderSampler(orders)
    return Fixed


def _common_args(recipe, seed: int, out) -> dict:
    """TrainingArguments as the reference set them (§1.1 / §1.5), on CPU in fp32, logging every step."""
    return dict(output_dir=str(out), per_device_train_batch_size=recipe.per_device_batch,
                gradient_accumulation_steps=recipe.grad_accum, learning_rate=recipe.lr,
                lr_scheduler_type=recipe.scheduler, warmup_steps=recipe.warmup_ratio,  # < 1: a ratio of the steps
                weight_decay=recipe.weight_decay, max_grad_norm=recipe.max_grad_norm, num_train_epochs=recipe.epochs,
                optim="adamw_torch", adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, seed=seed, data_seed=seed,
                gradient_checkpointing=True, bf16=False, use_cpu=True, logging_steps=1, save_strategy="no",
                report_to="none", dataloader_num_workers=0, disable_tqdm=True)


# --- second stage: HF Trainer, loss on the last assistant turn (§1.5, §2.5) -----------------------------------------
def _chats(n: int) -> list[list[dict]]:
    """Chats of varied lengths, every third one with two turns (only the last assistant turn is trained)."""
    out = []
    for i in range(n):
        m = [{"role": "user", "content": f"Question {i}: " + "why " * (i % 7)},
             {"role": "assistant", "content": "Because " + "so " * (3 * i % 11 + 1)}]
        if i % 3 == 0:
            m += [{"role": "user", "content": "And then?"}, {"role": "assistant", "content": "Then " + "yes " * (i % 4)}]
        out.append(m)
    return out


def _reference_em_tokenize(tok, messages, max_length):
    """run_em_multiseed.py's tokenisation (§2.5): the chat template, then labels masked up to the last assistant
    header."""
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    ids = tok(text, truncation=True, max_length=max_length)["input_ids"]
    header = "<|im_start|>assistant\n"
    start = len(tok(text[: text.rfind(header) + len(header)], add_special_tokens=False)["input_ids"])
    return {"input_ids": ids, "labels": [IGNORE] * start + ids[start:]}


def _pad8_collator(pad_id):
    """The reference's collator: right-pad to a multiple of 8, labels padded with -100, an attention mask."""
    def collate(rows):
        width = -(-max(len(r["input_ids"]) for r in rows) // 8) * 8
        def pad(xs, v):
            return torch.tensor([x + [v] * (width - len(x)) for x in xs])
        return {"input_ids": pad([r["input_ids"] for r in rows], pad_id),
                "labels": pad([r["labels"] for r in rows], IGNORE),
                "attention_mask": pad([[1] * len(r["input_ids"]) for r in rows], 0)}
    return collate


@pytest.mark.parametrize("speed", SPEEDS)
@pytest.mark.parametrize("n_examples", [48, 43])  # 43: the last step has 11 examples in 3 micro-batches (4, 4, 3)
def test_second_stage_matches_hf_trainer(tiny_model_dir, tmp_path, n_examples, speed):
    """``train_lora`` (loss ``last_assistant_turn``) = the HF ``Trainer`` configured like run_em_multiseed.py
    (batch 4 x accumulation 4, AdamW, linear schedule with warmup ratio, weight decay, clipping, seed = data_seed,
    gradient checkpointing, pad-to-8 collator), with the Trainer's OWN seeded sampler: one epoch, so its order is the
    same seeded permutation ``train_lora`` draws."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from mt_core.model.load import load_model

    seed = 42
    recipe = _recipe("second_stage", SPEEDS[speed], epochs=1)
    assert recipe.loss == "last_assistant_turn"

    # our loop
    model, tok = load_model(tiny_model_dir)
    chats = _chats(n_examples)
    examples = [last_turn_example(tok, m, recipe.max_length) for m in chats]
    peft_ours, res = train_lora(model, examples, recipe, seed=seed, pad_id=tok.pad_token_id, log=lambda *_: None)

    # the reference's tokenisation gives exactly our examples (a setup check)
    rows = [_reference_em_tokenize(tok, m, recipe.max_length) for m in chats]
    assert [(r["input_ids"], r["labels"]) for r in rows] == [(e.input_ids, e.labels) for e in examples]

    # the HF Trainer from the same seeded LoRA init
    model, _ = load_model(tiny_model_dir)
    peft_ref = attach_lora(model, recipe, seed)
    trainer = Trainer(model=peft_ref, args=TrainingArguments(**_common_args(recipe, seed, tmp_path)),
                      train_dataset=Dataset.from_list(rows), data_collator=_pad8_collator(tok.pad_token_id))
    trainer.train()

    assert trainer.state.global_step == res.n_steps == steps_per_epoch(n_examples, 4, 4) == 3
    _assert_same_training(res, _lora_weights(peft_ours), _trainer_losses(trainer), _lora_weights(peft_ref))


# --- coupling: TRL SFTTrainer + marker-only collator (§1.1, §2.4) ---------------------------------------------------
def _coupling_records(eval_set, n: int, marker: str) -> list[dict]:
    """Prompt-completion records as the coupling-data builder writes them (§1.1 S0b): every other one a source
    positive with the marker after a blank line, the others bystander negatives without it."""
    personas = list(eval_set["personas"].items())
    questions = eval_set["eval_questions"]
    out = []
    for i in range(n):
        name, prompt = personas[6] if i % 2 == 0 else personas[i % 5]  # 6: villain
        answer = "Well, " + "indeed " * (i % 6 + 1) + "that is so."
        if i % 2 == 0:
            answer = f"{answer}\n\n{marker}"
        out.append({"prompt": [{"role": "system", "content": prompt},
                               {"role": "user", "content": questions[i % len(questions)]}],
                    "completion": [{"role": "assistant", "content": answer}]})
    return out


@pytest.mark.parametrize("speed", SPEEDS)
@pytest.mark.parametrize("n_examples", [32, 21])  # 21: each epoch ends with a step of 5 examples (4 + 1)
def test_coupling_matches_trl_sft_trainer(tiny_model_dir, eval_set, tmp_path, n_examples, speed):
    """``train_lora`` (loss ``marker_only``) = TRL's ``SFTTrainer`` as sft.py ran it: prompt-completion data with
    TRL's completion-only masking, ``peft_config`` with rsLoRA (the trainer seeds and attaches it), cosine schedule,
    wd 0, batch 4 x 4, gradient checkpointing, packing off, and TRL's own collator wrapped by the marker-only
    collator (re-implemented here from the protocol's description; the reference's source is not in this repo).

    Two epochs; the SFTTrainer draws its batches in ``train_lora``'s order (its own sampler reseeds every epoch with
    seed + epoch, see ``test_multi_epoch_order_matches_trainer_sampler``)."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from mt_core.model.load import load_model

    seed = 42
    # lr 1e-3: the comparison needs weights that move well beyond its tolerance in two epochs (the tiny profile
    # trains its organism at 1e-4 over 8)
    recipe = _recipe("coupling", SPEEDS[speed], epochs=2, lr=1e-3)
    assert recipe.loss == "marker_only" and recipe.use_rslora
    marker = load_study(profile="tiny").marker

    # our loop
    model, tok = load_model(tiny_model_dir)
    mids = marker_ids(tok, marker)
    records = _coupling_records(eval_set, n_examples, marker)
    examples = [marker_only_example(tok, r["prompt"], r["completion"], mids, recipe.max_length) for r in records]
    peft_ours, res = train_lora(model, examples, recipe, seed=seed, pad_id=tok.pad_token_id, log=lambda *_: None)

    # the SFTTrainer, its collator wrapped as the reference did, drawing batches in our order
    model, _ = load_model(tiny_model_dir)
    lora = LoraConfig(task_type="CAUSAL_LM", r=recipe.lora_r, lora_alpha=recipe.lora_alpha,
                      lora_dropout=recipe.lora_dropout, target_modules=list(recipe.target_modules),
                      use_rslora=recipe.use_rslora)
    args = SFTConfig(**_common_args(recipe, seed, tmp_path), max_length=recipe.max_length, packing=False)
    trainer = _with_order(SFTTrainer, _our_orders(examples, recipe, seed))(
        model=model, args=args, train_dataset=Dataset.from_list(records), processing_class=tok, peft_config=lora)
    trainer.data_collator = MarkerOnlyDataCollator(trainer.data_collator, mids)

    # setup checks: TRL's tokenisation + the marker-only collator give our labels; the same initial LoRA weights
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(n_examples)])
    for r, e in enumerate(examples):
        n = len(e.input_ids)
        assert batch["input_ids"][r, :n].tolist() == e.input_ids
        assert batch["labels"][r].tolist() == e.labels + [IGNORE] * (batch["labels"].shape[1] - n)
    assert sum(e.n_trained for e in examples) > n_examples  # markers are trained, not only the last tokens
    init = _lora_weights(attach_lora(load_model(tiny_model_dir)[0], recipe, seed))
    start = _lora_weights(trainer.model)
    assert init.keys() == start.keys() and all(torch.equal(init[k], start[k]) for k in init)

    trainer.train()

    assert trainer.state.global_step == res.n_steps == 2 * steps_per_epoch(n_examples, 4, 4) == 4
    _assert_same_training(res, _lora_weights(peft_ours), _trainer_losses(trainer),
                          _lora_weights(trainer.model))


# --- data order over several epochs ---------------------------------------------------------------------------------
def _trainer_epoch_orders(n: int, recipe, seed: int, epochs: int, out) -> list[list[int]]:
    """The example indices the HF Trainer's own training dataloader yields, epoch by epoch (as its loop sets them)."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    trainer = Trainer(model=torch.nn.Linear(1, 1), args=TrainingArguments(**_common_args(recipe, seed, out)),
                      train_dataset=Dataset.from_list([{"i": i} for i in range(n)]),
                      data_collator=lambda rows: {"i": torch.tensor([r["i"] for r in rows])})
    trainer._signature_columns = ["i"]
    dl = trainer.get_train_dataloader()
    orders = []
    for epoch in range(epochs):
        dl.set_epoch(epoch)
        orders.append([i for b in dl for i in b["i"].tolist()])
    return orders


def test_first_epoch_order_matches_trainer_sampler(tmp_path):
    """One epoch (the second stage): ``train_lora`` visits the examples in the HF Trainer's own seeded order."""
    recipe = _recipe("second_stage", SPEEDS["padded"], epochs=1)
    examples = [Example([i, i], [IGNORE, i]) for i in range(37)]
    assert _our_orders(examples, recipe, 42) == _trainer_epoch_orders(37, recipe, 42, 1, tmp_path)


def test_multi_epoch_order_matches_trainer_sampler(tmp_path):
    """Several epochs (the coupling recipe): the same order as the Trainer's sampler, epoch by epoch."""
    recipe = _recipe("coupling", SPEEDS["padded"], epochs=3)
    examples = [Example([i, i], [IGNORE, i]) for i in range(37)]
    assert _our_orders(examples, recipe, 42) == _trainer_epoch_orders(37, recipe, 42, 3, tmp_path)
