"""`mt`: run a study through Dagster, query its results with SQL, inspect what is materialized.

    mt run                  materialize what is missing or stale of the study, stage by stage, in the Dagster instance
    mt demo                 `mt run` on the tiny profile: the whole study on a laptop, no network
    mt doctor               check weights, data, judge key, GPUs, disk and the instance before spending GPU hours
    mt sql "SELECT ..."     read-only SQL over the DuckDB catalogs of every study in the instance (table, csv or json)
    mt view                 a local web viewer of the catalogs: rate grid, completions, judge scores, side by side
    mt status               which partitions of which assets are materialized, and their checks per partition
    mt import-legacy DIR --study NAME   import the reference pipeline's result files as study NAME
    mt report --study NAME  the headline table (or --json) of the current study or an imported one
    mt lineage CELL         what a cell was built from (partition, run id, md5 per artefact) and what is stale
    mt pool [--gpus N]      set the instance's `gpu` pool limit to N (default: the GPUs found, at least 1)

Several studies live side by side in one instance: `--study PATH` picks one (default: $MT_STUDY, else the first of
$MT_STUDIES, else studies/marker_transfer_villain.yaml); its assets are the keys `<study name>/<asset>`.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _env(args) -> None:
    """Settings that must be in place before the code location is imported."""
    if getattr(args, "profile", None):
        os.environ["MT_PROFILE"] = args.profile
    if getattr(args, "study", None):
        os.environ["MT_STUDY"] = str(Path(args.study).resolve())
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(ROOT / ".dagster")))
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        shutil.copyfile(ROOT / "dagster.yaml", home / "dagster.yaml")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(ROOT)


def _defs():
    import definitions

    return definitions


def _study_defs(d):
    """The study this command is about, among the code location's (``--study`` / $MT_STUDY, else the first)."""
    return d.study_defs()  # a ConfigError is reported by main(), one message, exit code 2


def set_gpu_pool(instance, n: int | None = None) -> int:
    """The instance's ``gpu`` pool limit := n, or the number of GPUs found, on this machine or, under MT_COMPUTE=ray,
    in the Ray cluster (at least 1: without a GPU the pool's steps run on CPU). Once set it overrides
    ``concurrency.pools.default_limit`` of dagster.yaml for this pool."""
    from mt_resources import GpuAllocator

    n = max(1, GpuAllocator(ray=os.environ.get("MT_COMPUTE") == "ray").count()) if n is None else n
    if n < 1:
        raise SystemExit(f"--gpus {n}: a pool limit below 1 would never run a GPU step")
    instance.event_log_storage.set_concurrency_slots("gpu", n)
    return n


def cmd_pool(args) -> int:
    _env(args)
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        print(f"gpu pool limit: {set_gpu_pool(instance, args.gpus)} (instance {os.environ['DAGSTER_HOME']})")
    return 0


def cmd_demo(args) -> int:
    args.profile = "tiny"
    return cmd_run(args)


def cmd_run(args) -> int:
    _env(args)
    if args.cells:  # a bad study file or cell key fails here, before the code location is imported
        from mt_core.config import load_study

        chosen = load_study()
        for c in args.cells.split(","):
            chosen.cell(c)
    import dagster as dg

    from mt_doctor import diagnose
    from mt_resources import ArtifactStore
    from mt_runner import Runner, reconcile_dead_runs

    d = _defs()
    sd = _study_defs(d)
    study = sd.study
    cells = args.cells.split(",") if args.cells else study.cells
    for c in cells:
        study.cell(c)  # unknown cells fail here, before any work
    t0 = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        print(f"study {study.name}, profile {study.profile}: {study.description}")
        print(f"Dagster instance {os.environ['DAGSTER_HOME']}; artefacts {sd.root}; {len(cells)} cells; asset keys "
              f"{sd.name}/…")
        if args.dry_run:
            Runner(d.defs, sd, instance, cells=cells, force=args.force, cells_only=bool(args.cells),
                   until=args.until).preview()
            return 0
        problems = diagnose(study, sd.root, Path(os.environ["DAGSTER_HOME"]))
        if problems:
            raise SystemExit("mt doctor found problems; nothing was run:\n" + "\n".join(f"  {p}" for p in problems))
        reconcile_dead_runs(instance)
        if args.gpus is not None or "gpu" not in instance.event_log_storage.get_concurrency_keys():
            set_gpu_pool(instance, args.gpus)  # a limit set before (`mt pool`) is kept unless --gpus is given
        if "judge" not in instance.event_log_storage.get_concurrency_keys():
            # every pool set before runs start: two runs writing a pool's default at their first claim collide
            # on Postgres (docs/SCALING.md)
            instance.event_log_storage.set_concurrency_slots(
                "judge", instance.get_concurrency_config().pool_config.default_pool_limit or 1)
        print(f"gpu pool limit {instance.event_log_storage.get_concurrency_info('gpu').slot_count}; "
              f"compute {d.defs.resources['compute'].mode}")
        stale = ArtifactStore(root=str(sd.root)).clean_staging()  # left by steps killed over an hour ago
        if stale:
            print(f"removed {stale} staging folder(s) left by killed steps")
        ran = Runner(d.defs, sd, instance, cells=cells, force=args.force, cells_only=bool(args.cells),
                     log_level=args.log_level, launch=args.launch, until=args.until).run()
        if not ran:
            print("nothing to do: every artefact is current (--force redoes)")
    total = time.perf_counter() - t0
    from mt_core.layout import Catalog, StudySummary
    from mt_resources.store import ArtifactError

    summary = catalog = None
    if args.until == "analysis":
        store = ArtifactStore(root=str(sd.root))
        try:  # this host's copies: the folders under a local root, the cache's under an object store
            summary, catalog = (store.read(a, verify=False).path for a in (StudySummary.asset, Catalog.asset))
        except ArtifactError:
            pass
    if summary is None or not (summary / StudySummary.HEADLINE_MD).is_file():
        print(f"Done in {total / 60:.1f} min (stages up to {args.until}).")
        return 0
    print("\n" + (summary / StudySummary.HEADLINE_MD).read_text())
    print(f"Done in {total / 60:.1f} min.")
    print(f"Figure:  {summary / StudySummary.FIGURE_PNG}")
    print(f"DuckDB:  {catalog / Catalog.FILE}   (try: mt sql \"SELECT study, cell, "
          f"persona, avg(strict_hit::int) FROM completions GROUP BY ALL ORDER BY ALL\")")
    print(f"Web UI:  DAGSTER_HOME={os.environ['DAGSTER_HOME']} .venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 "
          f"-p 3000  (or `make ui`), then open http://127.0.0.1:3000")
    return 0


def cmd_doctor(args) -> int:
    _env(args)
    from mt_core.config import load_study
    from mt_core.layout import artefact_root
    from mt_doctor import diagnose

    study = load_study()
    problems = diagnose(study, artefact_root(study), Path(os.environ["DAGSTER_HOME"]), call_judge=not args.no_call)
    print(f"study {study.name}, profile {study.profile}: "
          + (f"{len(problems)} problem(s)" if problems else "ready (model, data, judge, GPUs, disk, instance)"))
    for p in problems:
        print(f"  {p}")
    return 1 if problems else 0


def store_root(artifacts: str | None = None) -> Path | str:
    """The current study's artefact root: ``--artifacts`` if given, else ``mt_core.layout.artefact_root``; an object
    store URL stays a string."""
    from mt_core.config import load_study
    from mt_core.layout import artefact_root
    from mt_resources.store import is_url

    if artifacts:
        return artifacts if is_url(artifacts) else Path(artifacts).resolve()
    return artefact_root(load_study())


def study_catalogs(instance, root: Path | str | None = None) -> dict[str, tuple[Path, str | None]]:
    """{study: (its DuckDB catalog file on this host, the md5 the instance recorded for it)} for every study whose
    ``<study>/duckdb_catalog`` the instance materialized (with ``root``: the one stored under that artefact root);
    ``open_catalogs`` checks the file against that record. A catalog on an object store (its recorded path is a
    version's URL) is read through the store into this host's cache."""
    from mt_core.layout import Catalog, artefact_dir
    from mt_core.report.catalog import CatalogError
    from mt_resources.store import ArtifactError, is_url, latest_metadata

    out = {}
    for key in instance.get_asset_keys():
        if len(key.path) == 2 and key.path[1] == Catalog.asset:
            meta = latest_metadata(instance, key, None) or {}
            where = meta.get("path")
            if not where:
                continue
            if root is not None and not (where.startswith(f"{str(root).rstrip('/')}/{Catalog.asset}/")
                                         if is_url(root) else Path(where) == artefact_dir(root, Catalog.asset)):
                continue
            if is_url(where):
                from mt_resources.objstore import read_url

                try:
                    where = read_url(where).path
                except ArtifactError as e:
                    raise CatalogError(f"the catalog of study {key.path[0]}: {e}") from None
            out[key.path[0]] = (Path(where) / Catalog.FILE, meta.get("md5"))
    return out


def cmd_sql(args) -> int:
    """Read-only SQL over the catalogs the instance recorded: a statement that is not a read is refused before
    anything is opened; each catalog is checked against the instance's record (retried while a rebuild replaces it)
    and every file it lists against the md5 it was verified at; the connection reads nothing else."""
    explicit = bool(args.study)
    _env(args)
    import dagster as dg
    import duckdb

    from mt_core.config import load_study
    from mt_core.report.catalog import CatalogChanged, CatalogError, check_query, open_catalogs, refusal

    try:
        check_query(args.query)
    except CatalogError as e:
        raise SystemExit(f"mt sql: {e}") from None
    only = load_study().name if explicit else None
    at = store_root(args.artifacts) if args.artifacts else None
    if at is not None:
        from mt_core.layout import Catalog, artefact_dir
        from mt_resources.store import is_url

        where = f"under {at}" if is_url(at) else f"at {artefact_dir(at, Catalog.asset) / Catalog.FILE}"
    df, last = None, None
    with dg.DagsterInstance.get() as instance:
        for _ in range(50):  # a rebuilt catalog is in place a moment before the instance records it
            try:
                recorded = {s: c for s, c in study_catalogs(instance, at).items() if only is None or s == only}
            except CatalogError as e:
                raise SystemExit(f"mt sql: {e}") from None
            if not recorded:
                what = where if at else f"of study {only}" if only else "of any study"
                raise SystemExit(f"mt sql: no DuckDB catalog {what} is recorded in the Dagster instance "
                                 f"{os.environ['DAGSTER_HOME']}; run `make demo` (or materialize duckdb_catalog) "
                                 f"first")
            try:
                with open_catalogs({s: p for s, (p, _) in recorded.items()},
                                   {s: md5 for s, (_, md5) in recorded.items()}) as con:
                    try:
                        rel = con.sql(args.query)
                        df = rel.pl() if rel is not None else None
                    except duckdb.Error as e:
                        raise SystemExit(f"mt sql: {refusal(e)}") from None
                break
            except CatalogChanged as e:
                last = e
                time.sleep(0.2)
            except CatalogError as e:
                raise SystemExit(f"mt sql: {e}") from None
        else:
            raise SystemExit(f"mt sql: {last}")
    if df is None:
        return 0
    if args.format == "csv":
        sys.stdout.write(df.write_csv())
    elif args.format == "json":
        sys.stdout.write(df.write_json() + "\n")
    else:
        import polars as pl

        with pl.Config(tbl_rows=args.max_rows, tbl_cols=-1, fmt_str_lengths=80, tbl_width_chars=200):
            print(df)
    return 0


def cmd_view(args) -> int:
    """The study viewer (mt_view) on the catalogs the instance recorded, opened as `mt sql` opens them (read-only,
    checked against the instance and the files' md5s), until Ctrl-C. It reopens them when the instance records a
    new catalog, so it can stay up while a study runs."""
    explicit = bool(args.study)
    _env(args)
    import dagster as dg
    import uvicorn

    from mt_assets.study import study_paths
    from mt_core.config import load_study
    from mt_core.report.catalog import CatalogError
    from mt_view.app import create_app
    from mt_view.db import Catalogs

    current = load_study()
    studies = [current, *(s for s in map(load_study, study_paths()) if s.name != current.name)]
    only = current.name if explicit else None
    with dg.DagsterInstance.get() as instance:
        catalogs = Catalogs(lambda: {s: c for s, c in study_catalogs(instance).items() if only in (None, s)})
        try:
            with catalogs.session():  # a missing or failing catalog is one message now, not an error page later
                pass
        except CatalogError as e:
            raise SystemExit(f"mt view: {e}" + (f" (study {only})" if only else "")) from None
        local = ("127.0.0.1", "localhost", "::1")
        if args.host not in local:
            print(f"mt view: serving on {args.host}: anyone who can reach it can read the study", file=sys.stderr)
        where = f"[{args.host}]" if ":" in args.host else args.host  # an IPv6 address in a URL
        print(f"mt view: http://{where}:{args.port}/  (Ctrl-C stops)", flush=True)
        app = create_app(catalogs, studies, hosts=[*local, "[::1]"] if args.host in local else ["*"])
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


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


def cmd_status(args) -> int:
    _env(args)
    import dagster as dg

    d = _defs()
    chosen = [_study_defs(d)] if args.study or os.environ.get("MT_STUDY") else list(d.STUDIES.values())
    graph = d.defs.resolve_asset_graph()
    with dg.DagsterInstance.get() as instance:
        for sd in chosen:
            print(f"study {sd.name} (profile {sd.study.profile}; asset keys {sd.name}/…; artefacts {sd.root})")
            for a in sd.assets:
                for key in sorted(a.keys, key=lambda k: k.to_user_string()):  # a multi-asset has several; checks none
                    pdef = graph.get(key).partitions_def
                    name = key.path[-1]
                    if pdef is None:
                        ok = instance.get_latest_materialization_event(key) is not None
                        print(f"  {name:24s} {'materialized' if ok else '-'}")
                    else:
                        done = instance.get_materialized_partitions(key)
                        keys = pdef.get_partition_keys()
                        print(f"  {name:24s} {len(done & set(keys))}/{len(keys)} partitions"
                              + (f"  missing: {', '.join(k for k in keys if k not in done)}"
                                 if len(done) < len(keys) else ""))
                    for line in check_status(instance, graph, key):
                        print(f"  {line}")
            for line in run_status(instance, sd.name):
                print(f"  {line}")
    return 0


def run_status(instance, study: str) -> list[str]:
    """The study's runs in progress, each with its partition, age and whether its process still exists (a run whose
    process is gone holds its pool slots until the next `mt run` marks it failed)."""
    import time

    import dagster as dg

    from mt_assets.common import ACTIVE_RUN
    from mt_runner import HOST_TAG, PID_TAG, STUDY_TAG, process_gone

    lines = []
    for rec in instance.get_run_records(filters=dg.RunsFilter(statuses=list(ACTIVE_RUN), tags={STUDY_TAG: study})):
        run = rec.dagster_run
        pid, host = run.tags.get(PID_TAG), run.tags.get(HOST_TAG)
        gone = process_gone(run)
        age = time.time() - rec.create_timestamp.timestamp()
        lines.append(f"run {run.run_id[:8]} {run.job_name.removeprefix(study + '__')}"
                     f"[{run.tags.get('dagster/partition', '-')}] {run.status.value} for {age:.0f}s"
                     + (f": its process {pid} is gone; `mt run` marks it failed and frees its slots" if gone else
                        f" (pid {pid} on {host})" if pid else ""))
    return lines or ["no run in progress"]


def cmd_lineage(args) -> int:
    _env(args)
    import json

    import dagster as dg

    from mt_core.config import ConfigError, load_study
    from mt_core.report.lineage import cell_lineage, render

    try:
        study = load_study()
        cell = study.cell(args.cell)
    except ConfigError as e:
        raise SystemExit(f"mt lineage: {e}") from None
    with dg.DagsterInstance.get() as instance:
        from mt_resources.store import latest_metadata

        lin = cell_lineage(cell.key, cell.base, lambda a, p: latest_metadata(instance, dg.AssetKey([study.name, a]), p),
                           study=study.name)
    print(json.dumps(lin, indent=2, default=str) if args.json else render(lin))
    return 1 if lin["wrong_study"] else 0


def cmd_import_legacy(args) -> int:
    src = Path(args.dir).resolve()  # before _env changes directory
    _env(args)
    import re

    from mt_core.config import load_study
    from mt_core.io import DataError
    from mt_core.layout import LEGACY, Catalog, MarkerCompletions
    from mt_core.report.legacy import import_legacy
    from mt_resources.store import ArtifactStore

    current = load_study().name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", args.name) or args.name == current:
        raise SystemExit(f"--study {args.name!r}: use a new name of letters, digits, '_', '.', '-' "
                         f"(not the current study {current!r})")
    root = store_root()
    store = ArtifactStore(root=str(root))
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
    import dagster as dg

    from mt_assets import STUDY_TAG
    from mt_runner import RunFailed
    from mt_runner import _failure_info as failure_info

    d = _defs()
    sd = _study_defs(d)
    with dg.DagsterInstance.get() as instance:
        run = d.defs.resolve_job_def(sd.job("analysis_job")).execute_in_process(
            instance=instance, asset_selection=[sd.key(Catalog.asset)], raise_on_error=False,
            tags={STUDY_TAG: sd.name},
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})
        why = None if run.success else failure_info(instance, run.run_id)
    if why:
        raise RunFailed(f"the import is stored, but rebuilding the DuckDB catalog failed (run {run.run_id}) in "
                        f"{why[0]}", why[1])
    print(f"DuckDB catalog rebuilt (run {run.run_id}): {store.read(Catalog.asset, verify=False).path / Catalog.FILE}")
    return 0


def _current_cells(study, root: Path, instance):
    """(cells, gates, verified) of the current study: a ``cell_numbers`` dict per complete cell, the gates of the
    sources' coupling adapters, and ``mt_assets.analysis.verify_study``'s findings (what is missing). Every artefact
    is the one the Dagster instance's latest materialization recorded (its md5), checked as an asset checks its
    upstream; a recorded artefact that fails verification raises ArtifactError naming it and the fix."""
    from mt_assets.analysis import verify_study
    from mt_assets.study import StudyDefs
    from mt_core.layout import Adapter, AlignmentScores, ArcScores, Audit, MarkerRates, cell_numbers
    from mt_resources.store import ArtifactStore

    v = verify_study(StudyDefs(study), instance, ArtifactStore(root=str(root)))
    cells = []
    for k, arts in v.cells.items():
        c = study.cell(k)
        cells.append(cell_numbers(k, c.condition, c.seed, *(arts[x.asset].path for x in (MarkerRates, ArcScores,
                                                                                        AlignmentScores, Audit)),
                                  own_persona=study.adapter_persona(k)))
    gates = {g: r for art in v.sources.values() for g, r in Adapter.read_gates(art.path).items()}
    return cells, gates, v


def cmd_report(args) -> int:
    if args.name and args.name.endswith((".yaml", ".yml")):  # a study file, not a study's name
        args.study, args.name = args.name, None
    _env(args)
    import json

    from mt_core.report import stats
    from mt_core.config import load_study
    from mt_core.report.legacy import read_cells
    from mt_core.steps.analysis import incomplete_line, preregistered
    from mt_core.io import read_json
    from mt_core.layout import LEGACY, Legacy
    from mt_resources.store import ArtifactError, ArtifactStore

    study = load_study()
    root = store_root(args.artifacts)
    store = ArtifactStore(root=str(root))
    imported = [p for _, p in store.published(LEGACY)]
    name = args.name or study.name
    incomplete, missing, unrecorded = None, {}, []
    try:
        if name == study.name:  # as the Dagster instance recorded it: the same rule as the study summary
            import dagster as dg

            with dg.DagsterInstance.get() as instance:
                cells, gates, v = _current_cells(study, root, instance)
            src, asst, marker = study.source_persona, study.assistant_persona, study.marker
            order = list(study.conditions)
            missing, unrecorded = v.missing, v.unrecorded
            incomplete = incomplete_line(study, v.missing, v.missing_sources)
        elif name in imported:
            d = store.read(LEGACY, name).path
            meta, cells = read_cells(d)
            src, asst, marker = meta["source_persona"], meta["assistant_persona"], meta["marker"]
            order = list(dict.fromkeys(c["condition"] for c in cells))
            gates = read_json(d / Legacy.GATES)
        else:
            raise SystemExit(f"unknown study {name!r}; available under {root}: {', '.join([study.name, *imported])}")
    except ArtifactError as e:
        raise SystemExit(f"mt report: {e}") from None
    if not cells:
        raise SystemExit(f"study {name!r}: no cell has published marker rates (with all its other artefacts) "
                         f"recorded in the Dagster instance {os.environ['DAGSTER_HOME']} under {root} yet "
                         f"(run `make demo`)")
    head = stats.headline(cells, study=name, source=src, assistant=asst, conditions_order=order, marker=marker)
    pre = preregistered(study, cells, source=src, assistant=asst)  # the reference's EM conditions are C1-C3 too
    if args.json:
        print(json.dumps({**head, "complete": incomplete is None, "incomplete": incomplete, "missing": missing,
                          "unrecorded": unrecorded, "preregistered": pre, "gates": gates}, indent=2))
    else:
        lines = "\n".join(f"- {x}" for x in stats.conjunction_lines(pre))
        banner = (f"{incomplete}\n\n" if incomplete else "") + (
            f"Left out, on disk but never recorded by the Dagster instance: {', '.join(unrecorded)}\n\n"
            if unrecorded else "")
        print(f"# {name}\n\n{banner}{stats.markdown_table(head)}\n{lines}")
    return 0


def main(argv: list[str] | None = None) -> int:
    from mt_runner import UNTIL  # stdlib-only at import: --help stays fast

    p = argparse.ArgumentParser(prog="mt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error (a user error is "
                                                        "otherwise one line on stderr, exit code 2); also $MT_DEBUG=1")
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profile", help="study profile (default: $MT_PROFILE or tiny)")
    common.add_argument("--study", help="study YAML (default: $MT_STUDY, else the first of $MT_STUDIES, else "
                                        "studies/marker_transfer_villain.yaml)")

    for name, helptext in (("run", "materialize what is missing or stale of the study through Dagster"),
                           ("demo", "`mt run` on the tiny profile (the whole study on a laptop, no network)")):
        d = sub.add_parser(name, parents=[common], help=helptext, description=helptext + ". An artefact is redone "
                           "when it is missing, when the study values its step uses changed, or when something it "
                           "was built from changed; the rest is kept.")
        d.add_argument("--cells", help="comma-separated cell keys (default: all cells of the study); inputs and "
                                       "coupling adapters are then redone only if missing or stale")
        d.add_argument("--force", action="store_true", help="redo the selected artefacts even if current")
        d.add_argument("--dry-run", action="store_true", help="print what would run and why, run nothing")
        d.add_argument("--until", choices=list(UNTIL), default="analysis",
                       help="the last stage to run (default analysis; e.g. `--cells C1_s42 --until cells` leaves "
                            "the study summary to the run that completes the grid)")
        d.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING"],
                       help="Dagster console log level (default WARNING: Dagster's console stays quiet and `mt` "
                            "prints the progress lines, the steps' warnings and a failed step's cause; INFO or DEBUG "
                            "show Dagster's own log)")
        d.add_argument("--gpus", type=int, help="set the gpu pool limit (default: keep it, or the GPUs found if unset)")
        d.add_argument("--launch", choices=["auto", "inline", "queued"], default="auto",
                       help="inline: each run in this process, one after another; queued: through the instance's run "
                            "queue and the Dagster daemon (started if none runs), up to the gpu pool's slots at once; "
                            "auto (default): queued when the gpu pool has more than one slot")
        d.set_defaults(fn=cmd_run if name == "run" else cmd_demo)

    doc = sub.add_parser("doctor", parents=[common], help="check everything a study needs before GPU work")
    doc.add_argument("--no-call", action="store_true", help="check the judge key is set, without calling the API")
    doc.set_defaults(fn=cmd_doctor)

    po = sub.add_parser("pool", help="set the instance's gpu pool limit (concurrent GPU steps)")
    po.add_argument("--gpus", type=int, help="the limit (default: the number of GPUs found, at least 1)")
    po.set_defaults(fn=cmd_pool)

    q = sub.add_parser("sql", parents=[common], help="read-only SQL over the DuckDB catalogs of every study in the "
                                                     "instance (--study: that study's only)")
    q.add_argument("query")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table")
    q.add_argument("--max-rows", type=int, default=40, help="rows shown in table format (default 40)")
    q.add_argument("--artifacts", help="artefact root (default: artifacts/<study>/<profile>)")
    q.set_defaults(fn=cmd_sql)

    v = sub.add_parser("view", parents=[common], help="a local web viewer of the catalogs (read-only)",
                       description="Serve a local web app over the DuckDB catalogs the Dagster instance recorded "
                       "(every study's; --study: that study's only), read-only as `mt sql` reads them: the grid of "
                       "cells x personas with marker rates, each cell's completions with the marker highlighted "
                       "(strict and loose hits), the judged alignment completions with scores and the judge's reply, "
                       "two cells side by side on the same prompts; filters and text search, each view a URL to "
                       "share. It picks up a rebuilt catalog while a study runs. Ctrl-C stops it.")
    v.add_argument("--port", type=int, default=8765,
                   help="port (default 8765: where the Dagster UI's links to each cell point)")
    v.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    v.set_defaults(fn=cmd_view)

    s = sub.add_parser("status", parents=[common], help="materialized partitions and check results per asset")
    s.set_defaults(fn=cmd_status)

    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--profile", help="profile of the current study (default: $MT_PROFILE or tiny)")
    li = sub.add_parser("import-legacy", parents=[where], help="import the reference pipeline's result files")
    li.add_argument("dir", help="directory with prepare_result.json and c<N>/run_result_c<N>_seed<S>.json")
    li.add_argument("--study", dest="name", required=True, help="name of the imported study")
    li.add_argument("--source", default="villain", help="the source persona (default villain)")
    li.set_defaults(fn=cmd_import_legacy)

    r = sub.add_parser("report", parents=[where], help="headline table of the current or an imported study")
    r.add_argument("--study", dest="name", help="a study YAML, or the name of the current or an imported study "
                                                "(default: the current study)")
    r.add_argument("--json", action="store_true", help="print the headline, the pre-registered analysis (G4 applied, "
                                                       "all seeds beside it) and the gates as JSON")
    r.add_argument("--artifacts", help="artefact root (default: artifacts/<study>/<profile>)")
    r.set_defaults(fn=cmd_report)

    ln = sub.add_parser("lineage", parents=[common], help="a cell's artefacts, their provenance and staleness")
    ln.add_argument("cell", help="cell key, e.g. C1_s42")
    ln.add_argument("--json", action="store_true", help="machine-readable output")
    ln.set_defaults(fn=cmd_lineage)

    args = p.parse_args(argv)
    debug = args.debug or os.environ.get("MT_DEBUG", "") not in ("", "0")
    if debug:
        os.environ["MT_DEBUG"] = "1"  # mt_runner shows Dagster's own log of a failed step, stack trace included
    try:
        return args.fn(args)
    except (Exception, SystemExit) as e:
        code, message = user_error(e)
        if code is None or debug:
            if code is not None and isinstance(e, SystemExit):
                import traceback

                traceback.print_exc()
            raise
        if message:
            print(message if message.startswith(("mt:", "mt ")) else f"mt: {message}", file=sys.stderr)
        return code


# What a user can fix (the input, the study file, the command line), by module and class; looked up in sys.modules so
# that naming them imports nothing (a module never imported cannot have raised its error).
USER_ERRORS = {"mt_core.config": ("ConfigError",), "mt_core.io": ("DataError",),
               "mt_resources.store": ("ArtifactError",), "mt_core.evals.judge": ("JudgeConfigError",),
               "duckdb": ("Error",)}


def user_error(e: BaseException) -> tuple[int | None, str]:
    """(exit code, one message) for an error the user can fix, (None, "") for anything else (a bug: its traceback
    shows). A SystemExit with a message is the command's own one-line verdict; its ``exit_code`` (mt_runner's failed
    runs) says whether the cause was the input (2) or not (1)."""
    if isinstance(e, SystemExit):
        if e.code is None or isinstance(e.code, int):
            return e.code or 0, ""
        return getattr(e, "exit_code", 2), str(e.code)
    for module, names in USER_ERRORS.items():
        mod = sys.modules.get(module)
        if mod is not None and isinstance(e, tuple(getattr(mod, n) for n in names)):
            return 2, str(e)
    return None, ""


if __name__ == "__main__":
    sys.exit(main())
