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
    """One line per asset check of ``key``: the partitions whose latest check execution passed, failed, or has no
    result (a check that does not apply to the partition, or one still running or skipped); partitioned checks name
    their partitions, so a gate of the villain adapter never reads as passed because the assistant's run had none."""
    lines = []
    for ck in sorted(graph.get(key).check_keys, key=lambda c: c.name):
        groups: dict[str, list[str]] = {}
        for info in instance.event_log_storage.get_asset_check_partition_info([ck]):
            word = {"SUCCEEDED": "passed", "FAILED": "failed"}.get(info.latest_execution_status.value, "no result")
            groups.setdefault(word, []).append(info.partition_key or "(unpartitioned)")
        if not groups:
            lines.append(f"  check {ck.name:20s} never run")
            continue
        pdef = graph.get(key).partitions_def
        order = {p: i for i, p in enumerate(pdef.get_partition_keys())} if pdef else {}
        parts = []
        for word in ("failed", "passed", "no result"):
            ks = sorted(groups.get(word, []), key=lambda p: order.get(p, -1))
            if ks == ["(unpartitioned)"] and pdef is None:
                parts.append(word)
            elif ks:
                few = word != "passed" or len(ks) <= 4  # failures are always named
                parts.append(f"{word}: {', '.join(ks) if few else f'{len(ks)} partitions'}")
        lines.append(f"  check {ck.name:20s} {'; '.join(parts)}")
    return lines
