"""The web UI, driven by a real browser: launch one cell from `dagster dev` and see its partitions turn materialized.

It starts from a copy of the session's first stages of the demo (tests/conftest.py's ``tiny_base``: the inputs and both
coupling adapters, materialized through Dagster with the same planted credentials); then `mt ui` (as `make ui`:
`dagster dev`, webserver + daemon, the instance's queued run coordinator) serves that temporary DAGSTER_HOME. Playwright
drives Debian's chromium: on cell_job's page, "Materialize all…", pick partition C4_s42, "Launch 1 run"; the test waits
for the run, checks every cell asset's C4_s42 partition in the instance, and saves docs/ui_cell_materialized.png. Then
it reads the metadata a researcher reads (per-persona rates, gate results with their thresholds, provenance with links,
the link to `mt view`) on the pages of marker_rates[C4_s42] and coupling_adapter[villain], and screenshots them
(docs/ui_metadata_after*.png). Skips where /usr/bin/chromium is missing (`make setup` installs it with apt-get where it
can).
"""
import json
import os
import re
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest
from shared_instances import copy_instance
from test_faults import SECRETS

from mt_assets.common import VIEW_URL  # where a cell's metadata links to
from mt_services import free_port, start_group, stop_group

pytestmark = pytest.mark.slow  # a whole study through Dagster / a browser: `make test-slow`

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CELL = "C4_s42"
STUDY = "marker_transfer_villain"  # the default study: asset keys <study>/<asset>, jobs <study>__<stage>
CELL_JOB = f"{STUDY}__cell_job"
CELL_ASSETS = ["cell_adapter", "marker_completions", "marker_rates", "arc_scores", "alignment_completions",
               "alignment_scores", "degeneracy_audit", "completion_length"]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (install Debian's chromium: apt-get install -y chromium)",
                allow_module_level=True)
sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright


def _gql(port: int, query: str) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", json.dumps({"query": query}).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)["data"]


def _wait(what: str, fn, timeout: float, log: Path, every: float = 1.0):
    """Poll ``fn`` until it returns a truthy value; fail naming ``what`` (with the server's log) after ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            got = fn()
        except (OSError, LookupError, TypeError):  # not up yet
            got = None
        if got:
            return got
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; mt ui log:\n{log.read_text()[-4000:]}")


def _bytes(f: Path) -> bytes:
    """The file's bytes; none for a file the live server removed since it was listed (SQLite's -wal, -shm)."""
    try:
        return f.read_bytes()
    except FileNotFoundError:
        return b""


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_base):
    tmp = tmp_path_factory.mktemp("ui")
    home, art, log = tmp / "home", tmp / "art", tmp / "dagster_dev.log"
    env = dict(os.environ, DAGSTER_HOME=str(home), MT_ARTIFACTS=str(art), MT_PROFILE="tiny", WANDB_MODE="disabled",
               **SECRETS)  # planted credentials: no page, no file of the instance or the store may show them
    env.pop("MT_STUDY", None)
    env.pop("MT_VIEW_URL", None)
    # the inputs and the coupling adapters, built with the same planted credentials: the session's (tests/conftest.py)
    copy_instance(tiny_base, home, art)

    port = free_port()
    # `mt ui`, as `make ui` starts it: `dagster dev` (webserver, daemon, code server, any run worker) in its own group
    proc = start_group([sys.executable, "-m", "mt_cli", "ui", "--port", str(port)], env=env, cwd=ROOT, log=log)

    def loaded():
        if proc.poll() is not None:
            pytest.fail(f"mt ui exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        q = "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"
        return _gql(port, q)["workspaceOrError"]["locationEntries"][0]["loadStatus"] == "LOADED"
    try:
        _wait("the code location to load", loaded, 180, log)
        yield {"port": port, "home": home, "log": log, "art": art}
    finally:
        stop_group(proc, grace_s=10)  # `mt ui` stops its group within 5 s of SIGTERM (tests/test_ui_stop.py)


def _screenshot_path(tmp_path_factory, name: str) -> Path:
    """docs/<name> when MT_SCREENSHOTS=1 (a deliberate refresh of the committed screenshots), else a temporary
    file, so that a test run leaves the tree clean."""
    return ROOT / "docs" / name if os.environ.get("MT_SCREENSHOTS") else tmp_path_factory.mktemp("ui") / name


def _metadata_panel(page, url: str, key: str):
    """The metadata table of the latest materialization of the asset partition at ``url`` (which has ``key``)."""
    page.goto(url)
    panel = page.locator("table").filter(has=page.get_by_text(key, exact=True)).first
    panel.wait_for()
    return panel


def _long_floats(text: str) -> list[str]:
    """The numbers shown with more than 4 significant digits."""
    return [x for x in re.findall(r"\d+\.\d+", text) if len(x.replace(".", "").strip("0")) > 4]


def _screenshot(page, panel, path: Path) -> None:
    """The page down to the end of the metadata panel, as far as the (tall) viewport shows it: the JSON at the
    panel's end is for machines."""
    box, size = panel.bounding_box(), page.viewport_size
    page.screenshot(path=str(path), clip={"x": 0, "y": 0, "width": size["width"],
                                          "height": min(box["y"] + box["height"], size["height"])})
    assert path.stat().st_size > 10_000


def _run_status(port: int) -> str | None:
    runs = _gql(port, '{ runsOrError(filter: {pipelineName: "%s"}) { ... on Runs { results { status } } } }' % CELL_JOB)
    status = [r["status"] for r in runs["runsOrError"]["results"]]
    return status[0] if status and status[0] in ("SUCCESS", "FAILURE", "CANCELED") else None


def test_launch_one_cell_from_the_ui(server, tmp_path_factory):
    port, home, log = server["port"], server["home"], server["log"]
    base = f"http://127.0.0.1:{port}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(60_000)
            page.goto(f"{base}/assets/{STUDY}/cell_adapter?view=partitions")
            page.get_by_text("Missing (13)").wait_for()  # nothing of any cell yet

            page.goto(f"{base}/locations/marker_transfer/jobs/{CELL_JOB}")
            page.get_by_role("button", name="Materialize all…").click()
            dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize")
            dialog.get_by_text("Select a partition or create one").click()
            page.get_by_placeholder("Filter partitions").fill(CELL)
            page.get_by_role("menuitem").filter(has_text=CELL).click()
            page.keyboard.press("Escape")  # close the picker, keep the dialog
            dialog.get_by_role("button", name="Launch 1 run").click()

            status = _wait("the cell_job run to finish", lambda: _run_status(port), 300, log, every=2)
            assert status == "SUCCESS", f"run ended {status}; mt ui log:\n{log.read_text()[-4000:]}"
            with dg.DagsterInstance.from_config(str(home)) as inst:
                run = inst.get_runs(dg.RunsFilter(job_name=CELL_JOB))[0]
                assert run.tags.get("mt/study") == STUDY  # a run launched from the UI carries its study too
                assert run.tags.get("dagster/partition") == CELL
                for a in CELL_ASSETS:
                    assert inst.get_materialized_partitions(dg.AssetKey([STUDY, a])) == {CELL}, a

            page.goto(f"{base}/assets/{STUDY}/cell_adapter?view=partitions")
            page.get_by_text("Materialized (1)").wait_for()
            page.get_by_text(CELL, exact=True).first.click()
            page.get_by_text(run.run_id[:8]).first.wait_for()  # the partition's latest materialization and run
            shot = _screenshot_path(tmp_path_factory, "ui_cell_materialized.png")
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000

            # what a researcher reads: a cell's per-persona rates as a table (percent and hits/N), its page in
            # `mt view`, its provenance with links to the upstream partition and run; the coupling adapter's gates
            # each with its threshold; no long float anywhere
            tall = browser.new_page(viewport={"width": 1900, "height": 1800})
            tall.set_default_timeout(60_000)
            panel = _metadata_panel(tall, f"{base}/assets/{STUDY}/marker_rates?view=partitions&partition={CELL}",
                                    "strict_rate_by_persona")
            assert panel.locator(f'a[href="{VIEW_URL}/cell/{CELL}?study={STUDY}"]').count() >= 1
            rates = panel.locator("table").filter(has_text="persona").first
            rate_ci = re.compile(r"^\d+\.\d % \(\d+/\d+; 95 % CI \d+\.\d–\d+\.\d %\)$")
            assert rates.get_by_text(rate_ci).count() >= 11 * 2  # strict, loose
            up = f"/assets/{STUDY}/marker_completions?view=partitions&partition={CELL}"
            panel.locator(f'a[href="{up}"]').first.wait_for()  # its rows may render after the table's first ones
            assert panel.locator(f'a[href="{up}"]').count() == 1
            assert panel.locator(f'a[href="/runs/{run.run_id}"]').count() == 1
            assert _long_floats(panel.inner_text()) == []
            _screenshot(tall, panel, _screenshot_path(tmp_path_factory, "ui_metadata_after.png"))

            panel = _metadata_panel(tall, f"{base}/assets/{STUDY}/coupling_adapter?view=partitions&partition=villain",
                                    "gate_results")
            gates = panel.locator("table").filter(has_text="threshold").first
            for text in ("G0", "G0b", "≤ 2 %", "≥ 60 %", "assistant_max", "source_min"):
                assert gates.get_by_text(text, exact=True).count() >= 1, text
            assert _long_floats(panel.inner_text()) == []
            _screenshot(tall, panel, _screenshot_path(tmp_path_factory, "ui_metadata_after_coupling.png"))
            tall.close()

            # the planted credentials are on no page (the run with its config and logs, the cell's scores, the
            # resources) and in no file of the instance or the store
            texts = {}
            for url in (f"{base}/runs/{run.run_id}", f"{base}/assets/{STUDY}/alignment_scores?view=events",
                        f"{base}/locations/marker_transfer/resources"):
                page.goto(url)
                page.wait_for_timeout(3000)
                texts[url] = page.content()
            files = [f for d in (home, server["art"]) for f in d.rglob("*") if f.is_file()]
            leaks = {f"{name} on {url}" for name, v in SECRETS.items() for url, t in texts.items() if v in t}
            leaks |= {f"{name} in {f}" for f in files for name, v in SECRETS.items() if v.encode() in _bytes(f)}
            assert not leaks, sorted(leaks)
        finally:
            browser.close()
