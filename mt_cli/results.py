"""`mt report` and `mt import-legacy`: a study's headline, and the reference's result files as a study."""
from __future__ import annotations

from pathlib import Path

from mt_cli.query import store_root
from mt_cli.session import current_study, instance, location, settings_of


def cmd_report(args) -> int:
    import json

    from mt_assets.report import cells_json, study_report
    from mt_assets.study import StudyDefs
    from mt_core.layout import LEGACY
    from mt_core.report import stats
    from mt_resources.store import ArtifactError, ArtifactStore

    if args.name and args.name.endswith((".yaml", ".yml")):  # a study file, not a study's name
        args.study, args.name = args.name, None
    s = settings_of(args)
    study = current_study(s)
    root = store_root(s, args.artifacts)
    store = ArtifactStore(root=str(root), cache=str(s.cache))
    name = args.name or study.name
    try:
        with instance(s) as inst:
            rep = study_report(StudyDefs(study, s), name, store, inst)
    except ArtifactError as e:
        raise SystemExit(f"mt report: {e}") from None
    if rep is None:
        imported = [p for _, p in store.published(LEGACY)]
        raise SystemExit(f"unknown study {name!r}; available under {root}: {', '.join([study.name, *imported])}")
    if args.json:
        print(json.dumps({**rep.head, "complete": rep.incomplete is None, "incomplete": rep.incomplete,
                          "missing": rep.missing, "unrecorded": rep.unrecorded, "preregistered": rep.preregistered,
                          "gates": rep.gates, **cells_json(rep), "coupling_sweep": rep.sweep}, indent=2))
    else:
        lines = "\n".join(f"- {x}" for x in stats.conjunction_lines(rep.preregistered))
        banner = (f"{rep.incomplete}\n\n" if rep.incomplete else "") + (
            f"Left out, on disk but never recorded by the Dagster instance: {', '.join(rep.unrecorded)}\n\n"
            if rep.unrecorded else "")
        print(f"# {name}\n\n{banner}{stats.markdown_table(rep.head)}\n{lines}")
        if rep.sweep:
            from mt_core.steps.analysis import sweep_markdown

            print(f"\n## Coupling sweep\n\n{sweep_markdown(rep.sweep)}")
    return 0


def cmd_import_legacy(args) -> int:
    import re

    from mt_core.io import DataError
    from mt_core.layout import LEGACY, Catalog, MarkerCompletions
    from mt_core.report.legacy import import_legacy
    from mt_resources.store import ArtifactStore
    from mt_run.runs import STUDY_TAG, RunFailed, failure_info

    src = Path(args.dir).resolve()
    s = settings_of(args)
    current = current_study(s).name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args.name) or args.name == current:
        raise SystemExit(f"--study {args.name!r}: use a new name of letters, digits, '_', '.', '-' "
                         f"(not the current study {current!r})")
    root = store_root(s)
    store = ArtifactStore(root=str(root), cache=str(s.cache))
    try:
        with store.writer(LEGACY, args.name, run_id="import-legacy", extra={"source_dir": str(src)}) as out:
            res = import_legacy(src, args.name, out, source=args.source)
    except DataError as e:
        raise SystemExit(f"import failed, nothing written: {e}") from None
    print(f"imported {res['n_cells']} cells ({', '.join(res['cells'])}) as study {args.name!r} into "
          f"{store.read(LEGACY, args.name, verify=False).location}")
    if not store.published(MarkerCompletions.asset):
        print(f"No cell of study {current!r} is materialized under {root} yet, so the DuckDB catalog was not "
              f"rebuilt. The import is stored and will appear in `mt sql` once `make demo` has run.")
        return 0
    loc = location(s)
    sd = loc.study()
    with instance(s) as inst:
        run = loc.defs.resolve_job_def(sd.job("analysis_job")).execute_in_process(
            instance=inst, asset_selection=[sd.key(Catalog.asset)], raise_on_error=False,
            tags={STUDY_TAG: sd.name},
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})
        why = None if run.success else failure_info(inst, run.run_id)
    if why:
        raise RunFailed(f"the import is stored, but rebuilding the DuckDB catalog failed (run {run.run_id}) in "
                        f"{why[0]}", why[1])
    print(f"DuckDB catalog rebuilt (run {run.run_id}): {store.read(Catalog.asset, verify=False).path / Catalog.FILE}")
    return 0
