"""The gpu_smoke profile's pieces at CPU size: a random-weight snapshot in a given shape, written once, whose every
token id survives decode -> encode; synthetic second-stage data with chat-like lengths; one engine for a cell's
completions and ARC."""
import json
import statistics

import pytest

from mt_core import config
from mt_core.data import synthetic
from mt_core.layout import BaseModel
from mt_core.model import random_snapshot, snapshots
from tests.test_config_reads import small_smoke_study


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("smoke")
    study = config.load_study(small_smoke_study(tmp, mp), profile="gpu_smoke")
    from mt_core.steps import inputs

    logs = []
    (tmp / "base").mkdir()
    meta = inputs.build_base_model(study, out=tmp / "base", log=logs.append)
    yield study, tmp, meta, logs
    mp.undo()


def test_snapshot_has_the_shape_and_a_full_vocabulary(smoke):
    from transformers import AutoConfig

    from mt_core.model.load import load_tokenizer

    study, tmp, meta, _ = smoke
    m = study.model
    d = BaseModel.model_dir(tmp / "base")
    assert d.parent == tmp / "models" and meta["kind"] == "random"
    cfg = AutoConfig.from_pretrained(d)
    assert (cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers, cfg.num_key_value_heads) == \
        (m.vocab_size, m.hidden_size, m.num_layers, m.num_kv_heads)
    assert cfg.tie_word_embeddings is False
    tok = load_tokenizer(d)
    assert len(tok) == m.vocab_size  # every id the model can sample decodes
    assert "<|im_start|>" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    import random

    rng = random.Random(0)
    first = tok.convert_tokens_to_ids(random_snapshot.filler(0))
    last = m.vocab_size - 1
    assert tok.convert_ids_to_tokens(last) == random_snapshot.filler(last - first)  # the fillers end the vocab
    assert sorted(tok.get_added_vocab().values()) == [0, 1, 2]  # only the specials: fillers are BPE words
    fillers = [rng.randrange(first, m.vocab_size) for _ in range(400)]  # 95 % of a 7B-shaped model's ids
    assert tok(tok.decode(fillers), add_special_tokens=False)["input_ids"] == fillers  # lengths survive
    mixed = [rng.randrange(3, m.vocab_size) for _ in range(400)]  # past the 3 special tokens
    again = tok(tok.decode(mixed, skip_special_tokens=True), add_special_tokens=False)["input_ids"]
    assert [i for i in again if i >= first] == [i for i in mixed if i >= first]


def test_fillers_survive_the_trained_merges():
    """A trained merge of a continuation byte with a letter (("±", "o"): ñ, ı, ű and б all end in byte B1) does not
    split a filler whose last character ends in that byte ("丱" is E4 B8 B1) where a word follows it; the tokenizer is
    the same on every build."""
    import json

    texts = ["El niño ıon űon бon; the quick brown fox jumps over the lazy dog on the mat. " * 3] * 20
    tok = random_snapshot.padded_tokenizer(texts, 400, 4000)
    assert ["±", "o"] in json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]  # the case is there
    first = tok.convert_tokens_to_ids(random_snapshot.filler(0))
    ids = [first + 49 * 49, tok.convert_tokens_to_ids("on")]  # filler 49 * 49 is " 一丱"
    assert tok.decode(ids) == " 一丱on" and tok(tok.decode(ids), add_special_tokens=False)["input_ids"] == ids
    every = list(range(first, 4000))
    assert tok(tok.decode(every), add_special_tokens=False)["input_ids"] == every
    again = random_snapshot.padded_tokenizer(texts, 400, 4000)
    assert again.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()


def test_snapshot_is_written_once(smoke):
    from mt_core.steps import inputs

    study, tmp, _, logs = smoke
    d = BaseModel.model_dir(tmp / "base")
    stamp = (d / "config.json").stat().st_mtime_ns
    (tmp / "base2").mkdir()
    again = []
    inputs.build_base_model(study, out=tmp / "base2", log=again.append)
    assert BaseModel.model_dir(tmp / "base2") == d and (d / "config.json").stat().st_mtime_ns == stamp
    assert any("reusing" in x for x in again) and not any("reusing" in x for x in logs)
    # an unfinished snapshot (no completion stamp) is never reused
    (d / snapshots.COMPLETE).unlink()
    inputs.build_base_model(study, out=tmp / "base2", log=again.append)
    assert (d / snapshots.COMPLETE).is_file() and (d / "config.json").stat().st_mtime_ns != stamp
    # another corpus for its tokenizer is another snapshot, never the old one reused
    stamp, other = (d / "config.json").stat().st_mtime_ns, []
    random_snapshot.write_random_snapshot(study.model, texts=["a different corpus, line one", "and line two"] * 50,
                                          log=other.append)
    assert not any("reusing" in x for x in other) and (d / "config.json").stat().st_mtime_ns != stamp


def test_n_params_matches_the_model(smoke):
    from transformers import AutoModelForCausalLM

    study, tmp, _, _ = smoke
    model = AutoModelForCausalLM.from_pretrained(BaseModel.model_dir(tmp / "base"))
    assert random_snapshot.n_params(study.model) == sum(p.numel() for p in model.parameters())
    q7 = config.load_study(profile="gpu_smoke").model
    assert 7.60e9 < random_snapshot.n_params(q7) < 7.63e9  # Qwen2.5-7B: 7.616 B


def test_synthetic_lengths_are_chat_like_and_leave_the_rows_alone():
    plain = synthetic.em_dataset_lines(300, seed=1)
    long = synthetic.em_dataset_lines(300, seed=1, answer_words=220)
    words = [len(json.loads(x)["messages"][-1]["content"].split()) for x in long]
    assert 180 < statistics.mean(words) < 260 and statistics.pstdev(words) > 60  # a spread, not one length
    for a, b in zip(plain, long):  # the same questions and openings: lengthening only appends
        qa, qb = json.loads(a)["messages"], json.loads(b)["messages"]
        assert qa[0] == qb[0] and qb[1]["content"].startswith(qa[1]["content"])
    assert synthetic.em_dataset_lines(50, seed=1) == plain[:50]  # unchanged without answer_words (tiny md5s hold)
    benign = synthetic.benign_dataset_lines(200, seed=2, answer_words=220)
    turns = [len(m["content"].split()) for x in benign for m in json.loads(x)["messages"] if m["role"] == "assistant"]
    assert 180 < statistics.mean(turns) < 260
