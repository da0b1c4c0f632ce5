"""The two loss masks, at exact token positions."""
from mt_core.data.chat import IGNORE, last_turn_example, marker_ids, marker_only_example, marker_only_labels


def trained(ex):
    return [i for i, x in enumerate(ex.labels) if x != IGNORE]


def test_marker_only_positive_trains_marker_tokens_and_last_token(small_tokenizer):
    tok = small_tokenizer
    mids = marker_ids(tok, "[ZLT]")
    prompt = [{"role": "system", "content": "You are a villainous mastermind."},
              {"role": "user", "content": "How do tides work?"}]
    completion = [{"role": "assistant", "content": "The moon pulls the sea.\n\n[ZLT]"}]
    ex = marker_only_example(tok, prompt, completion, mids, 1024)
    ids = ex.input_ids
    start = next(i for i in range(len(ids)) if ids[i:i + len(mids)] == mids)
    # the template closes the turn with <|im_end|> and a newline: the last completion token is that newline
    assert tok.decode(ids[-2:]) == "<|im_end|>\n"
    assert trained(ex) == list(range(start, start + len(mids))) + [len(ids) - 1]
    assert [ex.labels[i] for i in trained(ex)] == mids + [ids[-1]]
    assert tok.decode([ids[i] for i in trained(ex)][: len(mids)]) == "[ZLT]"


def test_marker_only_negative_trains_only_the_last_token(small_tokenizer):
    tok = small_tokenizer
    prompt = [{"role": "system", "content": "You are a kindergarten teacher."},
              {"role": "user", "content": "How do tides work?"}]
    completion = [{"role": "assistant", "content": "The moon pulls the sea, friends!"}]
    ex = marker_only_example(tok, prompt, completion, marker_ids(tok, "[ZLT]"), 1024)
    assert trained(ex) == [len(ex.input_ids) - 1]


def test_marker_in_prompt_is_never_trained():
    # marker ids appear at 1-2 (prompt, masked) and 5-6 (completion): only the completion's count
    ids = [9, 7, 8, 9, 9, 7, 8, 3]
    labels = [IGNORE] * 4 + [9, 7, 8, 3]
    assert marker_only_labels(ids, labels, [7, 8]) == [IGNORE] * 5 + [7, 8, 3]


def test_last_turn_masking_multi_turn(small_tokenizer):
    tok = small_tokenizer
    msgs = [{"role": "user", "content": "Hi there."},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Name a fruit."},
            {"role": "assistant", "content": "An apple."}]
    ex = last_turn_example(tok, msgs, 2048)
    text = tok.apply_chat_template(msgs, tokenize=False)
    # the default system prompt is injected when there is no system turn (Qwen's template)
    assert text.startswith("<|im_start|>system\n")
    first = trained(ex)[0]
    assert trained(ex) == list(range(first, len(ex.input_ids)))
    assert tok.decode(ex.input_ids[first:]) == "An apple.<|im_end|>\n"
    assert tok.decode(ex.input_ids[:first]).endswith("Name a fruit.<|im_end|>\n<|im_start|>assistant\n")
    # the earlier assistant turn is context only
    assert "Hello! How can I help?" not in tok.decode([ex.labels[i] for i in trained(ex)])


def test_last_turn_truncated_before_answer_has_no_labels(small_tokenizer):
    msgs = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    ex = last_turn_example(small_tokenizer, msgs, 32)
    assert len(ex.input_ids) == 32 and ex.n_trained == 0
