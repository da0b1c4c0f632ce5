"""`mt run`, `mt demo`, `mt pool`, `mt doctor`: materialize a study, size the gpu pool, check before GPU work."""
from __future__ import annotations

import time
from pathlib import Path

from mt_cli.session import current_study, instance, location, settings_of


def set_gpu_pool(instance, settings, n: int | None = None) -> int:
    """The instance's ``gpu`` pool limit := n, or the number of GPUs found, on this machine or, under MT_COMPUTE=ray,
    in the Ray cluster; without a GPU the pool's steps run on CPU, ``settings.jobs`` at once (`mt run` then executes
    that many runs of a stage side by side). Once set it overrides ``concurrency.pools.default_limit`` of dagster.yaml
    for this pool."""
    from mt_resources import GpuAllocator

    n = (GpuAllocator.of(settings).count() or settings.jobs) if n is None else n
    if n < 1:
        raise SystemExit(f"--gpus {n}: a pool limit below 1 would never run a GPU step")
    instance.event_log_storage.set_concurrency_slots("gpu", n)
    return n


def cmd_pool(args) -> int:
    s = settings_of(args)
    with instance(s) as inst:
        print(f"gpu pool limit: {set_gpu_pool(inst, s, args.gpus)} (instance {s.dagster_home})")
    return 0


def cmd_workers(args) -> int:
    from mt_resources.worker import stop_workers, workers

    s = settings_of(args)
    if args.stop:
        pids = stop_workers(s.workers)
        print(f"stopped {len(pids)} worker(s){': pids ' + ', '.join(map(str, pids)) if pids else ''}")
        return 0
    rows = workers(s.workers)
    if not rows:
        print(f"no worker on record in {s.workers} (MT_COMPUTE=worker starts one per GPU on first use)")
    for w in rows:
        held = f", {w['steps']} step(s), up {w['up_s']:.0f}s, holding {w['base'] or 'no base'}" if "steps" in w else ""
        print(f"{w['key']}  pid {w['pid']:<7} {w['state']}{held}  (log {w['log']})")
    return 0


def cmd_demo(args) -> int:
    args.profile = "tiny"
    return cmd_run(args)


def _pools(inst, settings, gpus: int | None) -> None:
    """Every pool set before runs start: two runs writing a pool's default at their first claim collide on Postgres
    (docs/SCALING.md). A gpu limit set before (`mt pool`) is kept unless --gpus is given."""
    keys = inst.event_log_storage.get_concurrency_keys()
    if gpus is not None or "gpu" not in keys:
        set_gpu_pool(inst, settings, gpus)
    if "judge" not in keys:
        inst.event_log_storage.set_concurrency_slots("judge",
                                                     inst.get_concurrency_config().pool_config.default_pool_limit or 1)


def cmd_run(args) -> int:
    s = settings_of(args)
    if args.cells:  # a bad study file or cell key fails here, before the code location is built
        chosen = current_study(s)
        for c in args.cells.split(","):
            chosen.cell(c)
    from mt_doctor import diagnose
    from mt_resources import ArtifactStore
    from mt_run.runner import Runner
    from mt_run.runs import reconcile_dead_runs

    loc = location(s)
    sd = loc.study()
    study = sd.study
    cells = args.cells.split(",") if args.cells else study.cells
    for c in cells:
        study.cell(c)  # unknown cells fail here, before any work
    t0 = time.perf_counter()
    runner = dict(settings=s, cells=cells, force=args.force, cells_only=bool(args.cells), until=args.until)
    with instance(s) as inst:
        print(f"study {study.name}, profile {study.profile}: {study.description}")
        print(f"Dagster instance {s.dagster_home}; artefacts {sd.root}; {len(cells)} cells; asset keys {sd.name}/…")
        if args.dry_run:
            Runner(loc.defs, sd, inst, **runner).preview()
            return 0
        problems = diagnose(study, sd.root, s)
        if problems:
            raise SystemExit("mt doctor found problems; nothing was run:\n" + "\n".join(f"  {p}" for p in problems))
        reconcile_dead_runs(inst)
        _pools(inst, s, args.gpus)
        print(f"gpu pool limit {inst.event_log_storage.get_concurrency_info('gpu').slot_count}; compute {loc.compute}")
        stale = ArtifactStore(root=str(sd.root), cache=str(s.cache)).clean_staging()  # left by killed steps
        if stale:
            print(f"removed {stale} staging folder(s) left by killed steps")
        ran = Runner(loc.defs, sd, inst, log_level=args.log_level, launch=args.launch, library_log=library_log(s),
                     **runner).run()
        if not ran:
            print("nothing to do: every artefact is current" + ("" if args.force else " (--force redoes)"))
    _headline(s, sd, args.until, time.perf_counter() - t0)
    return 0


def library_log(settings) -> Path:
    """This command's log of what the libraries print while runs execute in this process (W&B, transformers, tqdm,
    Python warnings): ``$DAGSTER_HOME/logs/mt-<date>-<time>.log`` (``mt_run.runner.libraries_to``)."""
    return settings.dagster_home / "logs" / f"mt-{time.strftime('%Y%m%d-%H%M%S')}.log"


def _headline(settings, sd, until: str, total: float) -> None:
    """The study's headline table and where to look next, once the analysis is current."""
    from mt_core.layout import Catalog, StudySummary
    from mt_resources.store import ArtifactError, ArtifactStore

    summary = catalog = None
    if until == "analysis":
        store = ArtifactStore(root=str(sd.root), cache=str(settings.cache))
        try:  # this host's copies: the folders under a local root, the cache's under an object store
            summary, catalog = (store.read(a, verify=False).path for a in (StudySummary.asset, Catalog.asset))
        except ArtifactError:
            pass
    if summary is None or not (summary / StudySummary.HEADLINE_MD).is_file():
        print(f"Done in {total / 60:.1f} min (stages up to {until}).")
        return
    print("\n" + (summary / StudySummary.HEADLINE_MD).read_text())
    print(f"Done in {total / 60:.1f} min.")
    print(f"Figure:  {summary / StudySummary.FIGURE_PNG}")
    print(f"DuckDB:  {catalog / Catalog.FILE}   (try: mt sql \"SELECT study, cell, "
          f"persona, avg(strict_hit::int) FROM completions GROUP BY ALL ORDER BY ALL\")")
    print(f"Web UI:  DAGSTER_HOME={settings.dagster_home} .venv/bin/mt ui  (or `make ui`), then open "
          f"http://127.0.0.1:3000")


def cmd_doctor(args) -> int:
    from mt_core.layout import artefact_root
    from mt_doctor import diagnose

    s = settings_of(args)
    study = current_study(s)
    problems = diagnose(study, artefact_root(study, s.artifacts), s, call_judge=not args.no_call)
    print(f"study {study.name}, profile {study.profile}: "
          + (f"{len(problems)} problem(s)" if problems else "ready (model, data, judge, GPUs, disk, instance)"))
    for p in problems:
        print(f"  {p}")
    return 1 if problems else 0
