"""Write the bytecode of what the test suite's processes import, once per install, before the suite (`make test`).

The suite starts a few hundred Python processes (`mt` commands, Dagster's code servers and run workers, Ray's daemons
and workers, Pipes children); each would compile what it imports if the bytecode were not on disk yet. Compiling the
whole venv wrote two and a half times the files the suite reads (docs/TESTING.md, "Set-up"); importing what the suite
imports writes just those. A module only some test imports compiles the first time it is imported, as Python does.
"""
from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

# imported, in two processes side by side of about equal import time: the model stack, and the platform around it
GROUPS = (
    ("torch", "transformers.models.qwen2.modeling_qwen2", "peft", "trl", "safetensors.torch", "sklearn.linear_model",
     "sklearn.metrics", "scipy.stats", "accelerate", "datasets", "torch._dynamo", "torch._inductor.compile_fx"),
    ("dagster", "dagster_webserver.app", "dagster_graphql", "dagster_postgres", "dagster_pipes", "ray",
     "ray.job_submission", "polars", "duckdb", "pyarrow.parquet", "matplotlib.pyplot", "wandb", "anthropic", "moto",
     "boto3", "s3fs", "playwright.sync_api", "starlette.testclient", "uvicorn", "psycopg2", "pytest", "xdist",
     "mt_cli", "mt_run.runner", "mt_assets", "mt_view.app", "mt_services.ray", "mt_services.postgres"),
)
# compiled whole, in a third process: packages the suite reads most of (Dagster's CLI and servers, Ray's daemons)
WHOLE = ("dagster", "dagster_graphql", "dagster_webserver", "dagster_ray", "ray/dashboard", "ray/_private",
         "ray/autoscaler", "networkx")
IMPORT = """import importlib, sys
for m in sys.argv[1:]:
    try:
        importlib.import_module(m)
    except Exception as e:  # an optional package missing here: its tests skip, nothing to compile
        print(f"bytecode: {m} not imported ({type(e).__name__}: {e})", file=sys.stderr)
"""


def main() -> int:
    site = Path(sysconfig.get_paths()["purelib"])
    whole = [str(site / p) for p in WHOLE if (site / p).is_dir()]
    procs = [subprocess.Popen([sys.executable, "-c", IMPORT, *g]) for g in GROUPS]
    procs.append(subprocess.Popen([sys.executable, "-m", "compileall", "-q", *whole], stdout=subprocess.DEVNULL))
    return max(p.wait() for p in procs)


if __name__ == "__main__":
    sys.exit(main())
