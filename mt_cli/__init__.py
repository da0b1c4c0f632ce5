"""`mt`: run a study through Dagster, query its results with SQL, inspect what is materialized.

    mt run                  materialize what is missing or stale of the study, stage by stage, in the Dagster instance
    mt demo                 `mt run` on the tiny profile: the whole study on a laptop, no network
    mt doctor               check weights, data, judge key, GPUs, disk and the instance before spending GPU hours
    mt sql "SELECT ..."     read-only SQL over the DuckDB catalogs of every study in the instance (table, csv or json;
                            several statements: each result under a header line)
    mt view                 a local web viewer of the catalogs: rate grid, completions, judge scores, side by side
    mt ui                   Dagster's web UI on the instance (`dagster dev`); Ctrl-C or SIGTERM stops it within seconds
    mt status               which partitions of which assets are materialized, and their checks per partition
    mt import-legacy DIR --study NAME   import the reference pipeline's result files as study NAME
    mt report --study NAME  the headline table (or --json) of the current study or an imported one
    mt lineage CELL         what a cell was built from (partition, run id, md5 per artefact) and what is stale
    mt export CELL --to DIR a cell's (or a source's) adapter and model card, the folder a Hub repo holds (--push REPO)
    mt pool [--gpus N]      set the instance's `gpu` pool limit to N (default: the GPUs found; none: $MT_CPU_JOBS)
    mt workers [--stop]     the workers that stay (MT_COMPUTE=worker): pid, idle or busy, what each holds

Several studies live side by side in one instance: `--study PATH` picks one (default: $MT_STUDY, else the first of
$MT_STUDIES, else studies/marker_transfer_villain.yaml); its assets are the keys `<study name>/<asset>`.
"""
from __future__ import annotations

import argparse
import signal
import sys

from mt_cli.export import cmd_export
from mt_cli.inspect import cmd_lineage, cmd_status
from mt_cli.query import cmd_sql, cmd_view
from mt_cli.results import cmd_import_legacy, cmd_report
from mt_cli.run import cmd_demo, cmd_doctor, cmd_pool, cmd_run, cmd_workers, set_gpu_pool
from mt_cli.ui import cmd_ui

__all__ = ["main", "user_error", "set_gpu_pool"]


def main(argv: list[str] | None = None) -> int:
    from mt_run.runs import UNTIL  # light at import: --help stays fast

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
                            "prints the progress lines, the steps' warnings and a failed step's cause, while what "
                            "the libraries print in inline runs (W&B, transformers, warnings, progress bars) goes to "
                            "$DAGSTER_HOME/logs/mt-<date>-<time>.log; INFO or DEBUG show Dagster's own log and leave "
                            "the libraries' output on the console)")
        d.add_argument("--gpus", type=int, help="set the gpu pool limit (default: keep it; if unset, the GPUs found, or without GPUs $MT_CPU_JOBS)")
        d.add_argument("--launch", choices=["auto", "inline", "queued"], default="auto",
                       help="inline: the runs in this process, one after another (on a machine without GPUs, as "
                            "many at once as the gpu pool has slots, each in a forked copy of this process); queued: "
                            "through the instance's run queue and the Dagster daemon (started if none runs), up to the "
                            "gpu pool's slots at once; auto (default): queued when there are GPUs and the gpu pool has "
                            "more than one slot")
        d.set_defaults(fn=cmd_run if name == "run" else cmd_demo)

    doc = sub.add_parser("doctor", parents=[common], help="check everything a study needs before GPU work")
    doc.add_argument("--no-call", action="store_true", help="check the judge key is set, without calling the API")
    doc.set_defaults(fn=cmd_doctor)

    po = sub.add_parser("pool", help="set the instance's gpu pool limit (concurrent GPU steps)")
    po.add_argument("--gpus", type=int, help="the limit (default: the number of GPUs found; without GPUs, CPU jobs: $MT_CPU_JOBS, default the cores, at most 8)")
    po.set_defaults(fn=cmd_pool)

    wk = sub.add_parser("workers", parents=[common], help="the workers that stay (MT_COMPUTE=worker): what each holds",
                        description="List the workers that stay (one per GPU and settings, MT_COMPUTE=worker) that "
                        "this instance started: pid, idle or busy, steps run, the base model held, the log. --stop "
                        "ends them (a step in progress fails and publishes nothing; the next step starts a new one).")
    wk.add_argument("--stop", action="store_true", help="stop every live worker")
    wk.set_defaults(fn=cmd_workers)

    q = sub.add_parser("sql", parents=[common], help="read-only SQL over the DuckDB catalogs of every study in the "
                                                     "instance (--study: that study's only)")
    q.add_argument("query", help="one or more reading statements separated by ';' (each runs and prints its result "
                                 "under a header line '-- statement N of M: ...')")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table",
                   help="table (default), csv or json (a list of rows; with several statements, a list with one "
                        "{\"statement\": ..., \"rows\": [...]} per statement)")
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

    u = sub.add_parser("ui", parents=[common], help="Dagster's web UI on the instance (`dagster dev`)",
                       description="Serve Dagster's web UI (`dagster dev`: webserver, daemon, code servers) on the "
                       "instance ($DAGSTER_HOME), as `make ui` does. Ctrl-C or SIGTERM stops all of it within 5 s.")
    u.add_argument("--port", type=int, default=3000, help="port (default 3000)")
    u.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    u.set_defaults(fn=cmd_ui)

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

    ex = sub.add_parser("export", parents=[common], help="a cell's or a coupling source's adapter as a Hub-ready folder",
                        description="Write the folder a Hugging Face Hub repo holds: one PEFT LoRA adapter on the "
                                    "study's base (a cell's coupling and own adapters combined exactly into one) and "
                                    "its model card (README.md: the Hub's header, the cell's numbers, the lineage "
                                    "with md5s and run ids, how to load it).")
    ex.add_argument("target", help="a cell key (e.g. C1_s42) or a coupling partition: a source (e.g. villain) or "
                                   "a coupling_sweep variant (e.g. villain.aggressive)")
    ex.add_argument("--to", required=True, help="the folder to write")
    ex.add_argument("--push", metavar="REPO", help="then upload the folder to the Hub repo REPO (needs $HF_TOKEN; "
                                                   "the token is never printed or written)")
    ex.set_defaults(fn=cmd_export)

    args = p.parse_args(argv)
    from mt_settings import Settings

    args.debug = debug = args.debug or Settings.from_env().debug  # the runner then shows Dagster's own log
    # SIGTERM stops a command as Ctrl-C does: the step in progress is interrupted, its staging discarded
    old = signal.signal(signal.SIGTERM, _terminate) if _main_thread() else None
    try:
        return args.fn(args)
    except KeyboardInterrupt as e:
        if debug:
            raise
        what = e.message() if hasattr(e, "message") else (
            f"mt {args.cmd}: interrupted; nothing partial was published; run the same command again to resume")
        print(what, file=sys.stderr)
        return 130
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
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _terminate(signum, frame):
    """SIGTERM as SIGINT: Dagster turns a SIGINT inside a step into an interruption of that step (its staging is
    discarded), and outside one it is a KeyboardInterrupt."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second SIGTERM while we wind down changes nothing
    signal.raise_signal(signal.SIGINT)


# What a user can fix (the input, the study file, the command line), by module and class; looked up in sys.modules so
# that naming them imports nothing (a module never imported cannot have raised its error).
USER_ERRORS = {"mt_core.config": ("ConfigError",), "mt_core.io": ("DataError",),
               "mt_resources.store": ("ArtifactError",), "mt_resources.artifact": ("ArtifactError",), "mt_core.evals.judge": ("JudgeConfigError",),
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
