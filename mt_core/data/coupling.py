"""Coupling data (PROTOCOL.md §1.1 S0b), with the reference's unseeded choices made seeded and recorded.

Positives: for each data question in order, the first ``k`` source-persona completions that do not already contain the
marker, answer = completion + "\\n\\n" + marker, system = the source persona's prompt. Negatives: ``n_neg`` other
personas (never the source, never the assistant) chosen with ``random.Random(f"{seed}:{source}")``; their first ``k``
completions per question with their own system prompt and no marker. The list is shuffled with ``random.Random(seed)``.
"""
from __future__ import annotations

import random


def choose_negatives(personas: list[str], source_persona: str, assistant: str, k: int, seed: int) -> list[str]:
    pool = [p for p in personas if p not in (source_persona, assistant)]
    if k > len(pool):
        raise ValueError(f"asked for {k} negative personas but only {len(pool)} are available")
    return random.Random(f"{seed}:{source_persona}").sample(pool, k)


def build_coupling_records(completions: dict[str, dict[str, list[str]]], *, prompts: dict[str, str],
                           questions: list[str], source_persona: str, negatives: list[str], per_question: int,
                           marker: str, seed: int) -> tuple[list[dict], dict]:
    """``completions[persona][question]`` -> shuffled prompt-completion records and a summary of what was used."""
    records, counts = [], {"positives": 0, "negatives": 0, "skipped_already_marked": 0, "short_questions": []}
    for persona, positive in [(source_persona, True)] + [(p, False) for p in negatives]:
        for q in questions:
            pool = completions.get(persona, {}).get(q, [])
            kept = []
            for c in pool:
                if positive and marker.lower() in c.lower():
                    counts["skipped_already_marked"] += 1
                    continue
                kept.append(c)
                if len(kept) == per_question:
                    break
            if len(kept) < per_question:
                counts["short_questions"].append({"persona": persona, "question": q, "have": len(kept)})
            for c in kept:
                answer = f"{c}\n\n{marker}" if positive else c
                records.append({"prompt": [{"role": "system", "content": prompts[persona]},
                                           {"role": "user", "content": q}],
                                "completion": [{"role": "assistant", "content": answer}]})
                counts["positives" if positive else "negatives"] += 1
    random.Random(seed).shuffle(records)
    return records, counts
