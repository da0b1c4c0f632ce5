"""A tiny, locally built Qwen2-architecture chat model for CPU runs of the pipeline.

It stands in for Qwen/Qwen2.5-7B-Instruct: same architecture class, same ChatML template and
special tokens, same generation defaults, but a few hundred thousand parameters, a small
byte-level BPE vocabulary and a short deterministic pretraining on synthetic chats.
Heavy imports (torch, transformers, tokenizers) happen inside the functions.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Iterable

QWEN_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
# Qwen2's pre-tokenisation split (as in Qwen2.5's tokenizer.json and transformers' Qwen2Tokenizer).
QWEN_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2.5-Instruct's template restricted to plain messages (no tools).
CHATML_TEMPLATE = (
    "{%- if not messages or messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\n" + QWEN_DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Train a deterministic byte-level BPE tokenizer with Qwen2's pipeline, special tokens and ChatML template."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    specials = [ENDOFTEXT, IM_START, IM_END]
    tok = Tokenizer(models.BPE())
    # The same pipeline transformers' Qwen2Tokenizer rebuilds on load (AutoTokenizer picks that
    # class for a qwen2 model), so the saved tokenizer reloads with identical behaviour.
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Special tokens are never merged: keep them out of the training text.
    def clean(stream):
        for t in stream:
            for s in specials:
                t = t.replace(s, "\n")
            yield t

    tok.train_from_iterator(clean(texts), trainer=trainer)
    return wrap_tokenizer(tok)


def wrap_tokenizer(tok):
    """A ``tokenizers.Tokenizer`` as built by ``train_tokenizer`` (or edited from one), as transformers' fast
    tokenizer with Qwen's special tokens and ChatML template."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        unk_token=None,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHATML_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
        padding_side="right",
    )


def generation_config(tok):
    from transformers import GenerationConfig

    end, eos = tok.convert_tokens_to_ids(ENDOFTEXT), tok.convert_tokens_to_ids(IM_END)
    return GenerationConfig(
        do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05,
        eos_token_id=[eos, end], pad_token_id=end, bos_token_id=end,
    )


def build_tiny_model(
    out_dir,
    *,
    texts: Iterable[str],
    conversations: list[list[dict]],
    seed: int = 0,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 256,
    max_position: int = 1024,
    pretrain_steps: int = 300,
    pretrain_lr: float = 3e-3,
    batch_size: int = 16,
    max_length: int = 192,
    row_tokens: int = 256,  # packed rows of ~2.5 examples: 17 % faster than 512 on 2 cores (less masked attention)
    log: Callable[[str], None] = print,
) -> dict:
    """Train a tokenizer, build a Qwen2ForCausalLM, pretrain it on ``conversations`` and save it.

    Returns n_params, vocab_size, final_loss, pretrain_seconds.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from mt_core.data.chat import Example
    from mt_core.model.train import _packed_loss, collate_packed

    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    tok = train_tokenizer(
        [*texts, *(m["content"] for conv in conversations for m in conv), QWEN_DEFAULT_SYSTEM],
        vocab_size,
    )
    log(f"tiny: tokenizer trained, vocab {len(tok)} ({time.perf_counter() - t0:.1f}s)")

    pad_id, eos_id = tok.pad_token_id, tok.eos_token_id
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size, max_position_embeddings=max_position,
        tie_word_embeddings=True, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
        bos_token_id=pad_id, eos_token_id=eos_id, pad_token_id=pad_id,
        use_sliding_window=False, dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())

    # Tokenise every rendered conversation once (truncated to max_length).
    rendered = tok.apply_chat_template(conversations, tokenize=False)
    seqs = [ids[:max_length] for ids in tok(rendered, add_special_tokens=False)["input_ids"]]

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=pretrain_lr, weight_decay=0.01)
    warmup = max(1, pretrain_steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / pretrain_steps))
    )
    model.train()
    t1 = time.perf_counter()
    losses: list[float] = []
    every = max(1, pretrain_steps // 6)
    for step in range(1, pretrain_steps + 1):
        idx = torch.randint(len(seqs), (batch_size,), generator=gen).tolist()
        # the step's examples packed into rows (no padding: two in five tokens of a padded batch were padding)
        b = collate_packed([Example(seqs[i], seqs[i]) for i in idx], "cpu", row_tokens=row_tokens)
        loss = _packed_loss(model, b) / len(b.tgt)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % every == 0 or step == 1 or step == pretrain_steps:
            log(f"tiny: pretrain step {step}/{pretrain_steps} loss {losses[-1]:.3f} "
                f"lr {sched.get_last_lr()[0]:.2e} ({time.perf_counter() - t1:.1f}s)")
    pretrain_seconds = time.perf_counter() - t1
    model.eval()

    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = generation_config(tok)
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    tail = losses[-min(10, len(losses)):]
    info = {
        "n_params": n_params,
        "vocab_size": len(tok),
        "first_loss": losses[0],
        "final_loss": sum(tail) / len(tail),
        "pretrain_seconds": round(pretrain_seconds, 2),
    }
    log(f"tiny: saved {n_params:,} params to {out_dir} (total {time.perf_counter() - t0:.1f}s)")
    return info
