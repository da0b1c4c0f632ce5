"""`mt view`: every page renders, and its counts are the catalog's; filters, search and pages select in SQL; completions
are escaped; the viewer reads only, follows a rebuilt catalog and refuses a tampered one. Then a browser on the tiny
study.

The fast tests read a synthetic study of the real study's shape (bench/view_bench.py's builder: the real store, marker
scorer, judge step and catalog; 2 samples per persona and question) through the Starlette TestClient, and compare
each page with plain SQL on the catalog. The browser test (slow) opens `mt view` on the tiny study that
tests/test_e2e.py runs, in Debian's chromium; MT_SCREENSHOTS=1 writes its screenshots to docs/view_*.png.
"""
from __future__ import annotations

import html
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import pytest
from starlette.testclient import TestClient

import mt_cli
from mt_core.evals.markers import loose_hit, strict_hit
from mt_core.layout import Catalog, MarkerCompletions, artefact_dir
from mt_core.report.catalog import CatalogError
from mt_core.report.html import ci as report_ci
from mt_view import format as fmt
from mt_view.app import create_app
from mt_view.db import Catalogs, load_queries

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import view_bench  # noqa: E402

CELL, OTHER, SOURCE = "C4_s42", "C1_s42", "villain"


# ---- a synthetic study ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return view_bench.build(tmp_path_factory.mktemp("view"), samples=2)


@pytest.fixture(scope="module")
def client(built):
    study, db, md5 = built
    with TestClient(create_app(Catalogs(lambda: {study.name: (db, md5)}), [study])) as c:
        yield c


@pytest.fixture(scope="module")
def sql(built):
    """Plain SQL on the catalog: the numbers every page must show."""
    con = duckdb.connect(str(built[1]), read_only=True)
    yield lambda q, *p: con.execute(q, list(p)).fetchall()
    con.close()


def get(client, path: str, **params) -> str:
    r = client.get(path, params={k: v for k, v in params.items() if v is not None})
    assert r.status_code == 200, r.text[-2000:]
    return r.text


def ids(page: str, kind: str = "completion") -> list[str]:
    return re.findall(rf'<div class="card {kind}" data-id="([^"]+)"', page)


def number(page: str, attr: str) -> int:
    return int(re.search(rf'data-{attr}="(\d+)"', page).group(1))


# ---- pages and their counts -----------------------------------------------------------------------------------------
def test_grid_shows_every_rate_with_its_counts(client, sql, built):
    page = get(client, "/")
    shown = {}
    for cell, row in re.findall(r'<tr class="[^"]*" data-cell="([^"]+)">(.*?)</tr>', page, re.S):
        for persona, href, rate, hits, n in re.findall(
                r'data-persona="([^"]+)"><a href="([^"]+)">([^<]+)<small>(\d+)/(\d+)</small>', row):
            assert html.unescape(href) == f"/completions?study={built[0].name}&cell={cell}&persona={persona}"
            shown[cell, persona] = (rate, int(hits), int(n))
    want = {(c, p): (fmt.pct(r), h, n) for c, p, r, h, n in
            sql("SELECT cell, persona, strict_rate, strict_hits, total FROM marker_rates")}
    assert shown == want and len(want) == 13 * 11
    loose = get(client, "/", rate="loose")
    c, p, r, h, n = sql("SELECT cell, persona, loose_rate, loose_hits, total FROM marker_rates "
                        "WHERE loose_hits > strict_hits LIMIT 1")[0]
    assert f'data-persona="{p}"><a href="/completions?study={built[0].name}&amp;cell={c}&amp;persona={p}">' \
           f'{fmt.pct(r)}<small>{h}/{n}</small>' in loose


def test_completion_length_is_what_the_completions_say(sql):
    """The completion_length view (the asset's numbers) against plain SQL over the completions, some of them cut."""
    cols = "cell, persona, n, mean_tokens, p50, p90, truncated_share, finished_strict_rate"
    got = sql(f"SELECT {cols} FROM completion_length ORDER BY cell, persona NULLS FIRST")
    want = sql("SELECT cell, persona, count(*), avg(n_tokens), quantile_cont(n_tokens, 0.5), "
               "quantile_cont(n_tokens, 0.9), avg((finish_reason = 'length')::INT), "
               "avg(strict_hit::INT) FILTER (WHERE finish_reason <> 'length') FROM completions "
               "GROUP BY GROUPING SETS ((cell, persona), (cell)) ORDER BY cell, persona NULLS FIRST")
    assert len(got) == 13 * 12 and [r[:3] for r in got] == [r[:3] for r in want]
    for g, w in zip(got, want):
        assert g[3:] == pytest.approx(w[3:]), (g, w)
    assert 0 < sql("SELECT max(truncated_share) FROM completion_length")[0][0] < 1  # the check can fail


def test_grid_shows_each_cells_length(client, sql):
    page = get(client, "/")
    shown = dict(re.findall(r'<td class="length" data-length="([^"]+)"[^>]*>(.*?)</td>', page, re.S))
    want = {c: f"{m:.1f}<small>p50 {p50:g} · p90 {p90:g} · {fmt.pct(cut)} cut</small>" for c, m, p50, p90, cut in
            sql("SELECT cell, mean_tokens, p50, p90, truncated_share FROM completion_length WHERE persona IS NULL")}
    assert shown == want and len(want) == 13


def test_every_rate_has_its_interval(client, sql):
    """Beside each rate of the grid, and in the summaries of a cell's completions and of two cells side by side, the
    95 % interval the report gives (``stats.wilson``)."""
    page = get(client, "/")
    shown = {}
    for cell, row in re.findall(r'<tr class="[^"]*" data-cell="([^"]+)">(.*?)</tr>', page, re.S):
        for persona, h, n, ci in re.findall(r'data-persona="([^"]+)"><a href="[^"]+">[^<]+<small>(\d+)/(\d+)</small>'
                                            r'<small class="ci"[^>]*>([^<]+)</small>', row):
            shown[cell, persona] = (int(h), int(n), html.unescape(ci))
    assert len(shown) == 13 * 11 and all(ci == report_ci(h, n) for h, n, ci in shown.values())
    assert report_ci(0, 336) == "0.0–1.1 %" and report_ci(18, 840) == "1.4–3.4 %" and report_ci(0, 0) == "–"
    assert "Wilson score 95 % interval" in page
    (n, strict), = sql("SELECT count(*), count(*) FILTER (strict_hit) FROM completions WHERE cell = ? AND persona = ?",
                       CELL, SOURCE)
    page = html.unescape(get(client, "/completions", cell=CELL, persona=SOURCE))
    assert f"{fmt.pct(strict / n)}, 95 % CI {report_ci(strict, n)})" in page
    page = html.unescape(get(client, "/compare", a=CELL, b=OTHER, persona=SOURCE))
    assert f"{fmt.pct(strict / n)}, 95 % CI {report_ci(strict, n)})" in page


def test_completions_of_a_cell_and_persona_page_by_page(client, sql):
    page = get(client, "/completions", cell=CELL, persona=SOURCE)
    n, strict, loose = sql("SELECT count(*), count(*) FILTER (strict_hit), count(*) FILTER (loose_hit) "
                           "FROM completions WHERE cell = ? AND persona = ?", CELL, SOURCE)[0]
    assert (number(page, "n"), number(page, "strict"), number(page, "loose")) == (n, strict, loose)
    want = [r[0] for r in sql("SELECT sample_id FROM completions WHERE cell = ? AND persona = ? "
                              "ORDER BY question_idx, sample_idx", CELL, SOURCE)]
    seen, p = [], 1
    while True:
        got = ids(get(client, "/completions", cell=CELL, persona=SOURCE, per=9, page=p))
        if not got:
            break
        assert len(got) <= 9
        seen += got
        p += 1
    assert seen == want and p - 1 == -(-n // 9)
    # the per-question breakdown: one row per question, its counts the catalog's
    q = sql("SELECT question_idx, count(*), count(*) FILTER (strict_hit) FROM completions WHERE cell = ? AND "
            "persona = ? GROUP BY ALL ORDER BY 1", CELL, SOURCE)
    rows = re.findall(r'question=(\d+)" title="[^"]*">q\d+ [^<]*</a></td>\s*<td class="num">(\d+)</td>', page)
    assert [(int(a), int(b)) for a, b in rows] == [(i, k) for i, k, _ in q]


HIT = {"strict": "strict_hit", "loose": "loose_hit", "loose_only": "loose_hit AND NOT strict_hit",
       "none": "NOT loose_hit"}


@pytest.mark.parametrize("params, where", [
    ({"hit": "strict"}, HIT["strict"]),
    ({"hit": "loose_only", "persona": SOURCE}, f"{HIT['loose_only']} AND persona = '{SOURCE}'"),
    ({"hit": "none", "cell": CELL, "question": "3"}, f"{HIT['none']} AND cell = '{CELL}' AND question_idx = 3"),
    ({"q": "Secret Garden"}, "contains(lower(text), 'secret garden')"),
    ({"q": "zlt", "persona": "assistant", "hit": "loose"}, "contains(lower(text), 'zlt') AND persona = 'assistant' "
                                                           "AND loose_hit"),
])
def test_filters_and_search_select_what_sql_selects(client, sql, params, where):
    per = 500
    page = get(client, "/completions", per=per, **params)
    want = [r[0] for r in sql(f"SELECT sample_id FROM completions WHERE {where} ORDER BY condition, seed, "
                              f"persona, question_idx, sample_idx")]
    assert want, where  # each case selects something
    assert ids(page) == want[:per]
    shown = number(page, "shown") if "hit" in params else number(page, "n")
    assert shown == len(want)


def test_one_completion_and_the_same_prompt_in_every_cell(client, sql, built):
    sid = f"{CELL}/{SOURCE}/q5/s1"
    page = get(client, "/completion", id=sid)
    assert ids(page) == [sid]
    others = re.findall(r'<div class="card other" data-cell="([^"]+)"', page)
    assert others == [c for c in built[0].cells if c != CELL]
    assert f"/compare?study={built[0].name}&amp;a={CELL}&amp;b={OTHER}&amp;persona={SOURCE}&amp;question=5" in page
    assert client.get("/completion", params={"id": "C4_s42/nobody/q0/s0"}).status_code == 404


def test_a_cells_permanent_address(client, sql):
    r = client.get(f"/cell/{CELL}", params={"persona": SOURCE}, follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == f"/completions?persona={SOURCE}&cell={CELL}"
    page = get(client, f"/cell/{CELL}")
    assert number(page, "n") == sql("SELECT count(*) FROM completions WHERE cell = ?", CELL)[0][0]
    # the Dagster UI's link names the study too (one viewer shows every study of the instance)
    from urllib.parse import urlsplit

    from mt_assets.common import viewer_link

    link = urlsplit(viewer_link("marker_transfer_villain", CELL).value)
    r = client.get(f"{link.path}?{link.query}", follow_redirects=False)
    assert r.headers["location"] == f"/completions?study=marker_transfer_villain&cell={CELL}"


def test_alignment_scores_filters_and_the_judges_reply(client, sql):
    page = get(client, "/alignment", cell=OTHER, per=500)
    n, errors = sql("SELECT count(*), count(error) FROM judge_scores WHERE cell = ?", OTHER)[0]
    assert number(page, "n") == len(ids(page, "judged")) == n and number(page, "errors") == errors
    assert "Scores follow." in page and "&#34;aligned&#34;" in page  # the raw reply, escaped
    page = get(client, "/alignment", amin="10", amax="60", q="steal", per=500)
    want = [r[0] for r in sql("SELECT sample_id FROM judge_scores WHERE aligned BETWEEN 10 AND 60 AND contains("
                              "lower(response), 'steal') ORDER BY condition, seed, question_idx, sample_idx")]
    assert want and ids(page, "judged") == want and number(page, "n") == len(want)
    assert number(get(client, "/alignment", errors="1"), "n") == 0


def test_two_cells_side_by_side_on_the_same_prompts(client, sql):
    page = get(client, "/compare", a=CELL, b=OTHER, persona=SOURCE, per=500)
    count = "SELECT count(*), count(*) FILTER (strict_hit) FROM completions WHERE cell = ? AND persona = ?"
    (an, a_strict), (bn, b_strict) = sql(count, CELL, SOURCE)[0], sql(count, OTHER, SOURCE)[0]
    assert (number(page, "a-n"), number(page, "a-strict"), number(page, "b-n"), number(page, "b-strict")) == (
        an, a_strict, bn, b_strict)
    keys = re.findall(r'<div class="card pairrow" data-key="([^"]+)"', page)
    assert len(keys) == number(page, "shown") == an
    diff = sql("SELECT count(*) FROM completions a JOIN completions b USING (persona, question_idx, sample_idx) "
               "WHERE a.cell = ? AND b.cell = ? AND a.persona = ? AND a.strict_hit <> b.strict_hit",
               CELL, OTHER, SOURCE)[0][0]
    assert number(get(client, "/compare", a=CELL, b=OTHER, persona=SOURCE, hit="diff"), "shown") == diff


# ---- what a completion may contain ---------------------------------------------------------------------------------
def test_completions_are_escaped(client, sql):
    page = get(client, "/completions", q="<script>", per=500)
    n = sql("SELECT count(*) FROM completions WHERE contains(text, '<script>')")[0][0]
    assert n and number(page, "n") == n
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &lt;b&gt;bold&lt;/b&gt;" in page
    assert "<script>alert" not in page and "<b>bold" not in page
    assert 'value="&lt;script&gt;"' in page  # the search box shows the query as text too


def test_only_its_own_script_runs_and_only_local_names_reach_it(built):
    study, db, md5 = built
    app = create_app(Catalogs(lambda: {study.name: (db, md5)}), [study], hosts=["127.0.0.1"])
    with TestClient(app, base_url="http://127.0.0.1:8765") as c:
        r = c.get("/completions", params={"q": "<script>"})
        nonce = re.search(r"script-src 'nonce-([^']+)'", r.headers["content-security-policy"]).group(1)
        assert re.findall(r"<script[^>]*>", r.text) == [f'<script nonce="{nonce}">']
        assert c.get("/", headers={"host": "rebound.example"}).status_code == 400


def test_highlights_are_the_scorers_hits(sql, built):
    marker = built[0].marker
    assert fmt.marker_spans("a [ZLT] b [z l t] c zlt", marker) == [(2, 7, "strict"), (10, 17, "loose")]
    assert str(fmt.highlight("<i>[zlt]</i>", marker)) == '&lt;i&gt;<mark class="strict">[zlt]</mark>&lt;/i&gt;'
    for text, strict, loose in sql("SELECT text, strict_hit, loose_hit FROM completions"):
        kinds = {k for _, _, k in fmt.marker_spans(text, marker)}
        assert ("strict" in kinds, bool(kinds)) == (strict, loose) == (strict_hit(text, marker),
                                                                       loose_hit(text, marker)), text


# ---- read-only, bad requests, a catalog that changes ----------------------------------------------------------------
def test_the_viewer_reads_only(client, built, sql, tmp_path):
    study, db, md5 = built
    catalogs = Catalogs(lambda: {study.name: (db, md5)})
    with catalogs.session() as s:
        for stmt in ("CREATE TABLE x (i INTEGER)", "DELETE FROM cells", f"COPY cells TO '{tmp_path}/x.csv'",
                     f"ATTACH '{tmp_path}/y.duckdb' AS y", "SET enable_external_access = true",
                     f"SELECT * FROM read_text('{ROOT}/README.md')"):
            with pytest.raises(duckdb.Error):
                s.con.execute(stmt)
    catalogs.close()
    n = sql("SELECT count(*) FROM cells")[0][0]
    page = get(client, "/completions", q="'; DROP TABLE cells; --")  # input is a bound parameter, never SQL
    assert number(page, "n") == 0 and sql("SELECT count(*) FROM cells")[0][0] == n
    (tmp_path / "bad.sql").write_text("-- name: page\nSELECT 1\n-- name: oops\nDELETE FROM cells\n")
    with pytest.raises(CatalogError, match="DELETE"):
        load_queries(tmp_path)
    assert len(load_queries()) >= 10


@pytest.mark.parametrize("path, params, status", [
    ("/completions", {"page": "x"}, 400), ("/completions", {"hit": "maybe"}, 400),
    ("/alignment", {"amin": "200"}, 400), ("/completions", {"cell": "C9_s1"}, 404),
    ("/compare", {"a": "C9_s1"}, 404), ("/", {"study": "nope"}, 404),
])
def test_bad_parameters_are_named(client, path, params, status):
    r = client.get(path, params=params)
    assert r.status_code == status and next(iter(params)) in r.text


def test_a_new_catalog_is_picked_up_and_a_tampered_file_refused(tmp_path):
    one = view_bench.build(tmp_path / "one", samples=1, cells=[CELL], raw_replies=False)
    two = view_bench.build(tmp_path / "two", samples=1, cells=[CELL, OTHER])
    now = {"rec": one}
    catalogs = Catalogs(lambda: {now["rec"][0].name: now["rec"][1:]}, poll_s=0)
    with TestClient(create_app(catalogs, [one[0]])) as c:
        assert "1 of 13 cells complete" in get(c, "/")
        assert "No raw reply recorded (an offline judge)" in get(c, "/alignment", q="minion")
        target = artefact_dir(tmp_path / "two", MarkerCompletions.asset, OTHER) / MarkerCompletions.COMPLETIONS
        good = target.read_bytes()
        target.write_bytes(good + b"\0")
        now["rec"] = two  # the instance recorded a rebuilt catalog, and one of its files changed since
        for _ in range(2):  # refused on every request, never the outdated catalog instead
            r = c.get("/")
            assert r.status_code == 503 and str(target) in r.text and "re-materialize" in r.text
        target.write_bytes(good)
        assert "2 of 13 cells complete" in get(c, "/")


def test_mt_view_without_a_catalog_says_so(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("MT_ARTIFACTS", str(tmp_path / "art"))
    for k in ("MT_STUDY", "MT_STUDIES"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)  # mt_cli reads nothing from the working directory
    assert mt_cli.main(["view", "--port", "1"]) == 2
    assert "mt view: no DuckDB catalog is recorded" in capsys.readouterr().err


# ---- in a browser, on the tiny study -------------------------------------------------------------------------------
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = os.environ.get("MT_SCREENSHOTS") == "1"  # refresh docs/view_*.png; otherwise they go to a temp dir


@pytest.fixture
def viewer(demo, tmp_path):
    """`mt view` on the tiny study's instance, as a user starts it; yields its URL."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (install Debian's chromium: apt-get install -y chromium)")
    home, art, _, _ = demo
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, DAGSTER_HOME=str(home), MT_ARTIFACTS=str(art), MT_PROFILE="tiny", WANDB_MODE="disabled")
    env.pop("MT_STUDY", None)
    log = tmp_path / "view.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "mt_cli", "view", "--port", str(port)], cwd=ROOT, env=env,
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.2)
        assert f"mt view: {url}/" in log.read_text()
        yield url, art
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=30) == 0, log.read_text()


@pytest.mark.slow
def test_browse_the_tiny_study(viewer, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, art = viewer
    con = duckdb.connect(str(artefact_dir(art, Catalog.asset) / Catalog.FILE), read_only=True)
    one = lambda q, *p: con.execute(q, list(p)).fetchone()  # noqa: E731
    shots = ROOT / "docs" if SCREENSHOTS else tmp_path
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url)
            hits, n, rate = one("SELECT strict_hits, total, strict_rate FROM marker_rates WHERE cell = ? AND "
                                "persona = ?", CELL, SOURCE)
            td = page.locator(f'tr[data-cell="{CELL}"] td[data-persona="{SOURCE}"]')
            expect(td).to_have_text(f"{fmt.pct(rate)}{hits}/{n}{report_ci(hits, n)}")
            page.screenshot(path=str(shots / "view_grid.png"))

            td.locator("a").click()  # grid -> the cell's completions of the villain
            page.wait_for_url(f"**/completions?*cell={CELL}*persona={SOURCE}*")
            summary = page.locator("#summary")
            expect(summary.locator("[data-n]")).to_have_text(str(n))
            expect(summary.locator("[data-strict]")).to_have_text(str(hits))
            page.select_option("select[name=hit]", "strict")  # a filter: only the completions with the marker
            page.wait_for_url("**hit=strict*")
            expect(summary.locator("[data-shown]")).to_have_text(str(hits))
            expect(page.locator(".card.completion")).to_have_count(min(hits, 50))
            expect(page.locator(".card.completion mark.strict")).not_to_have_count(0)
            page.screenshot(path=str(shots / "view_cell.png"))

            first = page.locator(".card.completion").first
            sid = first.get_attribute("data-id")
            first.get_by_text("open ›").click()  # -> the completion, and the same prompt in the other cells
            page.wait_for_url("**/completion?*")
            expect(page.locator(".card.completion")).to_have_attribute("data-id", sid)
            cells = [r[0] for r in con.execute("SELECT cell FROM cells WHERE complete AND cell <> ? ORDER BY "
                                               "condition, seed", [CELL]).fetchall()]
            expect(page.locator(".card.other")).to_have_count(len(cells))

            page.locator(f'.card.other[data-cell="{OTHER}"] a.compare').click()  # -> side by side
            page.wait_for_url("**/compare?*")
            page.select_option("select[name=question]", "")  # every question of the villain, not just this one
            page.wait_for_url(lambda u: "question=" not in u)
            count = "SELECT count(*), count(*) FILTER (strict_hit) FROM completions WHERE cell = ? AND persona = ?"
            for side, cell in (("a", CELL), ("b", OTHER)):
                k, s = one(count, cell, SOURCE)
                expect(page.locator(f"[data-{side}-n]")).to_have_text(str(k))
                expect(page.locator(f"[data-{side}-strict]")).to_have_text(str(s))
            expect(page.locator(".card.pairrow")).to_have_count(min(n, 50))
            page.screenshot(path=str(shots / "view_side_by_side.png"))

            page.goto(f"{url}/alignment?cell={CELL}")
            expect(page.locator("[data-n]")).to_have_text(str(one("SELECT count(*) FROM judge_scores WHERE "
                                                                   "cell = ?", CELL)[0]))
        finally:
            browser.close()
            con.close()
