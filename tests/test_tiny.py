"""Tests for mt_core.model.tiny: tokenizer, chat template and a small model build."""

import json
from pathlib import Path

import pytest

from mt_core.data import synthetic as syn
from mt_core.model import tiny

REF = Path(__file__).resolve().parents[1] / "reference"


@pytest.fixture(scope="module")
def corpus():
    ev = json.loads((REF / "eval_set.json").read_text())
    questions = ev["eval_questions"] + ev["betley_questions"]
    arc = [json.loads(x) for x in (REF / "arc_challenge_test.jsonl").read_text().splitlines()[:200]]
    texts = list(ev["personas"].values()) + questions
    texts += [r["question"] + "\n" + " ".join(r["choices"]) for r in arc]
    texts += syn.em_dataset_lines(100, 1) + syn.benign_dataset_lines(100, 2)
    convs = syn.pretraining_conversations(ev["personas"], questions, 300, 0)
    return ev, texts, convs


@pytest.fixture(scope="module")
def tok(corpus):
    return tiny.train_tokenizer(corpus[1], 512)


def test_tokenizer_specials_and_roundtrip(tok):
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok.bos_token is None
    for s in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert len(tok.encode(s, add_special_tokens=False)) == 1
    for text in ("Hello world!\n\nSecond paragraph.\n", "  spaces\tand tabs  ", "caf\u00e9 [ZLT] 42%"):
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_marker_tokens_contiguous(tok):
    marker = tok.encode("[ZLT]", add_special_tokens=False)
    assert len(marker) >= 2
    ids = tok.encode("hello\n\n[ZLT]", add_special_tokens=False)
    assert any(ids[i : i + len(marker)] == marker for i in range(len(ids)))


def test_tokenizer_deterministic(corpus, tok):
    again = tiny.train_tokenizer(corpus[1], 512)
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()


def test_chat_template(tok):
    user = [{"role": "user", "content": "Hi"}]
    out = tok.apply_chat_template(user, tokenize=False)
    assert out == (f"<|im_start|>system\n{tiny.QWEN_DEFAULT_SYSTEM}<|im_end|>\n"
                   "<|im_start|>user\nHi<|im_end|>\n")
    with_sys = [{"role": "system", "content": "You are a villain."}, *user]
    out = tok.apply_chat_template(with_sys, tokenize=False, add_generation_prompt=True)
    assert tiny.QWEN_DEFAULT_SYSTEM not in out
    assert out == ("<|im_start|>system\nYou are a villain.<|im_end|>\n"
                   "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def built(corpus, tmp_path_factory):
    _, texts, convs = corpus
    out = tmp_path_factory.mktemp("tiny")
    logs = []
    info = tiny.build_tiny_model(out, texts=texts, conversations=convs, vocab_size=512,
                                 pretrain_steps=30, batch_size=8, max_length=128, log=logs.append)
    return out, info, logs


def test_build_info(built):
    from transformers import AutoTokenizer

    out, info, logs = built
    assert info["first_loss"] > info["final_loss"] + 0.5
    assert info["vocab_size"] == 512 and info["n_params"] > 0
    assert len(AutoTokenizer.from_pretrained(str(out)).encode("[ZLT]", add_special_tokens=False)) >= 2
    assert any("step 30/30 loss" in line for line in logs)


def test_build_loads_and_generates(built, corpus):
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, _, _ = built
    for name in ("model.safetensors", "generation_config.json", "tokenizer.json", "config.json"):
        assert (out / name).exists()
    # AutoTokenizer rebuilds a Qwen2Tokenizer; it must tokenise exactly like the saved (trained) pipeline.
    saved = Tokenizer.from_file(str(out / "tokenizer.json"))
    loaded = AutoTokenizer.from_pretrained(out)
    samples = [*corpus[1][:50], "hello\n\n[ZLT]", "x  [ZLT] y\r\n\tz 12345 caf\u00e9!"]
    samples += loaded.apply_chat_template(corpus[2][:20], tokenize=False)
    for text in samples:
        assert loaded.encode(text, add_special_tokens=False) == saved.encode(text, add_special_tokens=False).ids
    gen_cfg = json.loads((out / "generation_config.json").read_text())
    assert gen_cfg["do_sample"] is True and gen_cfg["top_k"] == 20
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = loaded
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert gen_cfg["eos_token_id"] == [tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id]
    msgs = [{"role": "system", "content": corpus[0]["personas"]["villain"]},
            {"role": "user", "content": "What causes earthquakes?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    torch.manual_seed(0)
    gen = model.generate(**enc, max_new_tokens=8)
    assert gen.shape[1] > enc["input_ids"].shape[1]
