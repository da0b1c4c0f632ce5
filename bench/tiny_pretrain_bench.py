"""Seconds per pretraining step of the tiny base, by packed row width (docs/BENCHMARKS.md, "the whole tiny study"):
the tiny profile's own chats and tokenizer, the organism's shape, 40 timed steps after 5, two torch threads.

    .venv/bin/python bench/tiny_pretrain_bench.py 512 256 192 128 0      # 0: one varlen row per step
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("row_tokens", type=int, nargs="+", help="packed row widths to time (0: varlen, one row)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from mt_core import config
    from mt_core.data import synthetic
    from mt_core.data.chat import Example
    from mt_core.data.eval_set import EvalSet
    from mt_core.model import tiny
    from mt_core.model.train import _packed_loss, collate_packed
    from mt_core.steps.inputs import _corpus

    torch.set_num_threads(args.threads)
    study = config.load_study(config.DEFAULT_STUDY, "tiny")
    m, es = study.model, EvalSet.load(study)
    convs = synthetic.pretraining_conversations(es.prompts, es.coupling_questions + es.questions, n=2000, seed=m.seed)
    convs = synthetic.with_signatures(convs, es.prompts, study.assistant_persona, rate=m.sign_rate,
                                      avoid=study.marker, seed=m.seed)
    tok = tiny.train_tokenizer([*_corpus(study), *(x["content"] for c in convs for x in c), tiny.QWEN_DEFAULT_SYSTEM],
                               m.vocab_size)
    seqs = [ids[:192] for ids in tok(tok.apply_chat_template(convs, tokenize=False),
                                     add_special_tokens=False)["input_ids"]]
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=m.hidden_size, num_hidden_layers=m.num_layers,
                      num_attention_heads=m.num_heads, num_key_value_heads=m.num_kv_heads,
                      intermediate_size=m.intermediate_size, max_position_embeddings=1024, tie_word_embeddings=True,
                      use_sliding_window=False, dtype="float32")
    print(f"{len(seqs)} chats, mean {sum(map(len, seqs)) / len(seqs):.0f} tokens; {args.threads} torch threads")
    for rt in args.row_tokens:
        torch.manual_seed(0)
        model, gen = Qwen2ForCausalLM(cfg).train(), torch.Generator().manual_seed(0)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step():
            idx = torch.randint(len(seqs), (16,), generator=gen).tolist()
            b = collate_packed([Example(seqs[i], seqs[i]) for i in idx], "cpu", row_tokens=rt or 512, varlen=rt == 0)
            loss = _packed_loss(model, b) / len(b.tgt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(5):
            step()
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        print(f"row_tokens {rt or 'varlen'}: {(time.perf_counter() - t) / args.steps:.4f} s a step")


if __name__ == "__main__":
    main()
