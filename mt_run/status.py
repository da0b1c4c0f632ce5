"""What the instance recorded of a study, as lines a researcher reads (`mt status`): materialized partitions per asset,
check verdicts per partition, runs in progress."""
from __future__ import annotations

from mt_run.runs import runs_in_progress


def asset_lines(instance, graph, sd) -> list[str]:
    """One line per asset of the study (partitions materialized, the missing ones named), each followed by its
    checks' lines, then the study's runs in progress."""
    lines = []
    for a in sd.assets:
        for key in sorted(a.keys, key=lambda k: k.to_user_string()):  # a multi-asset has several; checks none
            pdef = graph.get(key).partitions_def
            name = key.path[-1]
            if pdef is None:
                ok = instance.get_latest_materialization_event(key) is not None
                lines.append(f"{name:24s} {'materialized' if ok else '-'}")
            else:
                done = instance.get_materialized_partitions(key)
                keys = pdef.get_partition_keys()
                lines.append(f"{name:24s} {len(done & set(keys))}/{len(keys)} partitions"
                             + (f"  missing: {', '.join(k for k in keys if k not in done)}"
                                if len(done) < len(keys) else ""))
            lines += check_status(instance, graph, key)
    return lines + runs_in_progress(instance, sd.name)


def check_status(instance, graph, key) -> list[str]:
    """One line per asset check of ``key``, its partitions grouped by outcome in the words of ``mt_core.outcomes``
    (failures and "no positives" name their partitions, and a single one its reason). Each partition's outcome is its
    latest check result; an execution that a run planned but never finished (a killed run, since marked failed) does
    not hide the result before it. A gate has no result for another source's adapter: "not applicable"."""
    from mt_core.outcomes import FAILED, NOT_APPLICABLE, PASSED, WORDS, audit_word, stated

    lines = []
    pdef = graph.get(key).partitions_def
    keys = pdef.get_partition_keys() if pdef else [""]  # "": the unpartitioned asset's one result
    for ck in sorted(graph.get(key).check_keys, key=lambda c: c.name):
        latest: dict[str, tuple[str, str]] = {}  # partition -> (word, reason), newest result first
        for rec in instance.event_log_storage.get_asset_check_execution_history(ck, limit=10_000):
            ev = rec.event.dagster_event.event_specific_data if rec.event and rec.event.dagster_event else None
            if rec.status.value not in ("SUCCEEDED", "FAILED") or ev is None or rec.partition in latest:
                continue
            meta = {k: v.value for k, v in (ev.metadata or {}).items()}
            latest[rec.partition or ""] = (audit_word(meta["outcome"]) if meta.get("outcome")  # (older: the audit's)
                                           else PASSED if ev.passed else FAILED,
                                           meta.get("reason") or "")
        applies = graph.get_check_spec(ck).metadata.get("applies_to")
        applies = getattr(applies, "value", applies)
        groups: dict[str, list[str]] = {}
        for p in keys:
            if p in latest:
                groups.setdefault(latest[p][0], []).append(p)
            elif applies is not None and p not in applies:
                groups.setdefault(NOT_APPLICABLE, []).append(p)
            else:
                groups.setdefault("no result", []).append(p)
        if set(groups) == {"no result"}:
            lines.append(f"  check {ck.name:20s} never run")
            continue
        parts = []
        for word in (*WORDS, "no result"):
            ks = groups.get(word, [])
            if not ks:
                continue
            reason = latest[ks[0]][1] if ks[0] in latest else ""
            if not pdef:
                parts.append(stated(word, reason))
            elif len(ks) == 1 and reason and word != PASSED:
                parts.append(f"{word}: {ks[0]} ({reason})")
            else:
                few = word != PASSED or len(ks) <= 4  # what is not a pass is always named
                parts.append(f"{word}: {', '.join(ks) if few else f'{len(ks)} partitions'}")
        lines.append(f"  check {ck.name:20s} {'; '.join(parts)}")
    return lines
