"""`mt status` and `mt lineage`: what the instance recorded, and what a cell was built from."""
from __future__ import annotations

from mt_cli.session import current_study, instance, location, settings_of


def cmd_status(args) -> int:
    from mt_run.status import asset_lines

    s = settings_of(args)
    loc = location(s)
    chosen = [loc.study()] if s.study is not None else list(loc.studies.values())
    graph = loc.defs.resolve_asset_graph()
    with instance(s) as inst:
        for sd in chosen:
            print(f"study {sd.name} (profile {sd.study.profile}; asset keys {sd.name}/…; artefacts {sd.root})")
            for line in asset_lines(inst, graph, sd):
                print(f"  {line}")
    return 0


def cmd_lineage(args) -> int:
    import json

    import dagster as dg

    from mt_core.config import ConfigError
    from mt_core.report.lineage import cell_lineage, render
    from mt_resources.store import LatestRecords

    s = settings_of(args)
    try:
        study = current_study(s)
        cell = study.cell(args.cell)
    except ConfigError as e:
        raise SystemExit(f"mt lineage: {e}") from None
    with instance(s) as inst:
        records = LatestRecords(inst)
        lin = cell_lineage(cell.key, cell.coupling or "raw", lambda a, p: records(dg.AssetKey([study.name, a]), p),
                           study=study.name)
    print(json.dumps(lin, indent=2, default=str) if args.json else render(lin))
    return 1 if lin["wrong_study"] else 0
