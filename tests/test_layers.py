"""The layering of docs/DESIGN.md, checked on the source: the environment is read in mt_settings only, mt_core imports
none of the layers above it (nor Dagster), nobody imports Dagster's private ``dagster._core``, and no two modules of
the project import each other, directly or round a longer circle (imports inside functions count too)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ["mt_core", "mt_assets", "mt_resources", "mt_run", "mt_cli", "mt_services", "mt_view", "definitions.py",
           "mt_settings.py", "mt_worker.py", "mt_doctor.py"]
OURS = ("mt_", "definitions")


def _files() -> dict[str, Path]:
    out = {}
    for p in PRODUCT:
        for f in ([ROOT / p] if p.endswith(".py") else sorted((ROOT / p).rglob("*.py"))):
            mod = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            out[mod.removesuffix(".__init__")] = f
    return out


def _imports(f: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_the_environment_is_read_in_mt_settings_only():
    found = [f"{m}:{n}" for m, f in _files().items() if m != "mt_settings"
             for n, line in enumerate(f.read_text().splitlines(), 1) if "os.environ" in line or "getenv" in line]
    assert found == []


def test_mt_core_imports_no_layer_above_it_nor_dagster():
    up = ("mt_assets", "mt_resources", "mt_run", "mt_cli", "mt_settings", "definitions", "dagster", "mt_services",
          "mt_view", "mt_worker", "mt_doctor")
    bad = {m: sorted(i for i in _imports(f) if i.split(".")[0] in up)
           for m, f in _files().items() if m.startswith("mt_core")}
    assert {m: v for m, v in bad.items() if v} == {}


def test_no_private_dagster_import():
    tests = {f"tests.{f.stem}": f for f in sorted((ROOT / "tests").rglob("*.py"))}  # the tests too: public APIs only
    bad = {m: sorted(i for i in _imports(f) if i.startswith("dagster._")) for m, f in {**_files(), **tests}.items()}
    assert {m: v for m, v in bad.items() if v} == {}


def test_no_import_circle():
    files = _files()
    graph = {m: {i if i in files else i.rsplit(".", 1)[0] for i in _imports(f) if i.startswith(OURS)} & set(files)
             - {m} for m, f in files.items()}
    # a package's __init__ re-exporting its own modules is no circle of ours: a module and its package are one
    graph = {m: {d for d in deps if not (d.startswith(m + ".") or m.startswith(d + "."))} for m, deps in graph.items()}
    circles, state = [], {}

    def visit(m, path):
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                circles.append(path[path.index(d):] + [d])
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert circles == []
