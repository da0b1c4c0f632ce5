"""The viewer's pages: a Starlette app over ``Catalogs``, server-rendered with Jinja2 (autoescaped).

Every page is a GET whose whole state is in its query string, so any view can be shared as a URL. Pages read one page
of rows (LIMIT/OFFSET in SQL) and their counts, never a whole table; user input reaches SQL only as bound parameters.
"""
from __future__ import annotations

import contextlib
import secrets
from typing import Sequence
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse
from starlette.routing import Route

from mt_core.config import IN_DISTRIBUTION, Study
from mt_core.layout import PER_CELL
from mt_core.outcomes import audit_word
from mt_core.report.catalog import CatalogError
from mt_core.report.html import ci
from mt_view import format as fmt
from mt_view.db import Catalogs, Session

PER_PAGE = 50
HITS = {"": "any", "strict": "strict hit", "loose": "loose hit", "loose_only": "loose, not strict", "none": "no hit"}
COMPARE_HITS = {"": "all prompts", "a": "marker in A", "b": "marker in B", "diff": "A and B differ"}


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Params:
    """The query string of a request, read with types and bounds; a bad value is a 400 naming it."""

    def __init__(self, request: Request):
        self.qp = request.query_params

    def text(self, name: str, choices: Sequence[str] | None = None) -> str:
        v = self.qp.get(name, "").strip()
        if choices is not None and v not in choices:
            raise BadRequest(f"{name}={v!r}: expected one of {', '.join(repr(c) for c in choices)}")
        return v

    def opt(self, name: str) -> str | None:
        return self.text(name) or None

    def number(self, name: str, lo: float, hi: float, kind=int):
        v = self.text(name)
        if not v:
            return None
        try:
            n = kind(v)
        except ValueError:
            raise BadRequest(f"{name}={v!r}: not {'an integer' if kind is int else 'a number'}") from None
        if not lo <= n <= hi:
            raise BadRequest(f"{name}={v}: out of range [{lo}, {hi}]")
        return n

    def page(self) -> tuple[int, int]:
        """(page number from 1, rows per page)."""
        return self.number("page", 1, 10**9) or 1, self.number("per", 1, 500) or PER_PAGE


def create_app(catalogs: Catalogs, studies: Sequence[Study], hosts: Sequence[str] = ("*",)) -> Starlette:
    """The viewer over ``catalogs``; ``studies`` (their configs) give each study's marker and its assistant and source
    personas; a study of the catalogs without a config (an imported one) takes the first study's. ``hosts``: the
    Host headers answered (a server on 127.0.0.1 answers only its own names: no other site's page can reach it
    through a DNS name that points at this machine)."""
    env = Environment(loader=PackageLoader("mt_view"), autoescape=select_autoescape(["html"]), trim_blocks=True,
                      lstrip_blocks=True, auto_reload=False)
    env.globals.update(pct=fmt.pct, ci=ci, heat=fmt.heat, score_style=fmt.score_style, HITS=HITS,
                       COMPARE_HITS=COMPARE_HITS, audit_word=audit_word)
    configs = {s.name: s for s in studies}

    def config(name: str) -> Study:
        return configs.get(name, studies[0])

    def page(request: Request, template: str, status: int = 200, **ctx) -> HTMLResponse:
        def here(**changes) -> str:
            """This page's URL with ``changes`` (None or "" drops a parameter); any change but the page's own goes
            back to page 1."""
            params = dict(request.query_params)
            if "page" not in changes:
                params.pop("page", None)
            params.update(changes)
            kept = {k: v for k, v in params.items() if v not in (None, "")}
            return request.url.path + ("?" + urlencode(kept) if kept else "")

        def link(path: str, **params) -> str:
            kept = {k: v for k, v in params.items() if v not in (None, "")}
            return path + ("?" + urlencode(kept) if kept else "")

        nonce = secrets.token_urlsafe(16)
        html = env.get_template(template).render(here=here, link=link, nonce=nonce, **ctx)
        # completions are model outputs: even one that escaped escaping could run no script but the page's own
        csp = f"default-src 'none'; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'; form-action 'self'"
        return HTMLResponse(html, status_code=status, headers={"Content-Security-Policy": csp})

    def view(fn):
        """A page handler: runs in the threadpool with a session on the catalogs; errors become pages."""
        def endpoint(request: Request):
            try:
                with catalogs.session() as db:
                    studies_rows = db.rows("studies")
                    p = Params(request)
                    names = [r["study"] for r in studies_rows]
                    study = p.text("study") or (names[0] if names else "")
                    if study not in names:
                        raise BadRequest(f"no study {study!r} in the catalogs (studies: {', '.join(names)})", 404)
                    ctx = fn(db, p, study, config(study))
                    return page(request, ctx.pop("template"), studies=studies_rows, study=study, **ctx)
            except BadRequest as e:
                return page(request, "error.html", e.status, title="Bad request", message=str(e), studies=[])
            except CatalogError as e:
                return page(request, "error.html", 503, title="The catalog cannot be read", message=str(e),
                            studies=[])
        return endpoint

    def check_cell(cells: list[dict], cell: str | None, name: str = "cell") -> None:
        if cell is not None and cell not in {c["cell"] for c in cells}:
            raise BadRequest(f"{name}={cell!r}: no such cell in this study", 404)

    def personas(db: Session, study: str, cfg: Study, rates: list[dict] | None = None) -> list[str]:
        """The study's personas (from its marker rates, if already read): assistant and source first (the personas
        the study is about), then by name."""
        names = {r["persona"] for r in rates or db.rows("grid.rates", study=study)}
        first = [x for x in (cfg.assistant_persona, cfg.source_persona) if x in names]
        return first + sorted(names - set(first))

    def grid(db: Session, p: Params, study: str, cfg: Study) -> dict:
        rate = p.text("rate", ("", "strict", "loose")) or "strict"
        rates, cells = db.rows("grid.rates", study=study), db.rows("grid.cells", study=study)
        sets: dict[tuple, dict] = {}  # (cell, further eval set) -> {persona: its row}
        for r in db.rows("grid.sets", study=study):
            sets.setdefault((r["cell"], r["eval_set"]), {})[r["persona"]] = r
        for c in cells:
            c["nothing"] = set(c["missing"] or ()) >= set(PER_CELL)
        return {"template": "grid.html", "cells": cells,
                "personas": personas(db, study, cfg, rates), "rates": {(r["cell"], r["persona"]): r for r in rates},
                "lengths": {(r["cell"], r["persona"]): r for r in db.rows("grid.length", study=study)},
                "probe": _by_cell(db.rows("grid.probe", study=study)) if db.has("probe") else {},
                "sets": sets, "set_names": sorted({k[1] for k in sets}), "rate": rate, "cfg": cfg}

    def completions(db: Session, p: Params, study: str, cfg: Study) -> dict:
        cells = db.rows("grid.cells", study=study)
        cell, persona = p.opt("cell"), p.opt("persona")
        check_cell(cells, cell)
        n, per = p.page()
        args = dict(study=study, cell=cell, persona=persona, question=p.number("question", 0, 10**6),
                    hit=p.text("hit", list(HITS)), q=p.text("q"), qset=p.opt("qset"))
        stats = db.rows("completions.stats", **args)
        chosen = [s for s in stats if args["question"] in (None, s["question_idx"])]
        summary = {k: sum(s[k] for s in chosen) for k in ("n", "strict", "loose", "shown")}
        rows = db.rows("completions.page", **args, limit=per, offset=(n - 1) * per)
        return {"template": "completions.html", "cells": cells, "personas": personas(db, study, cfg),
                "qsets": [*IN_DISTRIBUTION, *cfg.eval_sets], "questions": stats, "summary": summary, "rows": rows,
                "args": args, "pager": _pager(n, per, summary["shown"]), "mark": _marker(cfg)}

    def completion(db: Session, p: Params, study: str, cfg: Study) -> dict:
        sid = p.text("id")
        same = db.rows("completion", study=study, id=sid)
        if not same:
            raise BadRequest(f"id={sid!r}: no marker completion with this id in study {study}", 404)
        return {"template": "completion.html", "me": same[0], "others": same[1:], "mark": _marker(cfg)}

    def alignment(db: Session, p: Params, study: str, cfg: Study) -> dict:
        cells = db.rows("grid.cells", study=study)
        cell = p.opt("cell")
        check_cell(cells, cell)
        n, per = p.page()
        args = dict(study=study, cell=cell, question=p.number("question", 0, 10**6), q=p.text("q"),
                    amin=p.number("amin", 0, 100, float), amax=p.number("amax", 0, 100, float),
                    cmin=p.number("cmin", 0, 100, float), cmax=p.number("cmax", 0, 100, float),
                    errors=p.text("errors", ("", "1")) == "1")
        summary = db.one("alignment.summary", **args)
        rows = db.rows("alignment.page", **args, limit=per, offset=(n - 1) * per)
        return {"template": "alignment.html", "cells": cells, "questions": db.rows("alignment.questions", **args),
                "summary": summary, "rows": rows, "args": args, "pager": _pager(n, per, summary["n"])}

    def compare(db: Session, p: Params, study: str, cfg: Study) -> dict:
        cells = db.rows("grid.cells", study=study)
        keys = [c["cell"] for c in cells if c["complete"]]
        a = p.opt("a") or (keys[0] if keys else None)
        b = p.opt("b") or (keys[1] if len(keys) > 1 else a)
        check_cell(cells, a, "a")
        check_cell(cells, b, "b")
        n, per = p.page()
        args = dict(study=study, a=a, b=b, persona=p.opt("persona"), question=p.number("question", 0, 10**6),
                    hit=p.text("hit", list(COMPARE_HITS)), q=p.text("q"))
        summary = db.one("compare.summary", **args)
        rows = db.rows("compare.page", **args, limit=per, offset=(n - 1) * per)
        questions = db.rows("completions.stats", study=study, cell=a, persona=args["persona"], hit="", q="", qset=None)
        return {"template": "compare.html", "cells": cells, "personas": personas(db, study, cfg),
                "questions": questions, "summary": summary, "rows": rows, "args": args,
                "pager": _pager(n, per, summary["shown"]), "mark": _marker(cfg)}

    def cell_link(request: Request) -> RedirectResponse:
        """``/cell/<cell>``: a cell's permanent address (the Dagster UI links each cell's materializations here)."""
        params = {**request.query_params, "cell": request.path_params["cell"]}
        return RedirectResponse("/completions?" + urlencode(params))

    routes = [Route("/", view(grid)), Route("/completions", view(completions)), Route("/completion", view(completion)),
              Route("/alignment", view(alignment)), Route("/compare", view(compare)),
              Route("/cell/{cell}", cell_link)]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        catalogs.close()

    return Starlette(routes=routes, lifespan=lifespan,
                     middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts))])


def _by_cell(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["cell"], []).append(r)
    return out


def _marker(cfg: Study):
    return lambda text: fmt.highlight(text, cfg.marker)


def _pager(page: int, per: int, total: int) -> dict:
    last = max(1, -(-total // per))
    return {"page": page, "per": per, "total": total, "last": last, "first_row": (page - 1) * per + 1 if total else 0,
            "last_row": min(page * per, total)}
