"""The platform's settings: the one module that reads (and, for child processes, writes) the environment.

Every entry point reads the environment once, here, into a ``Settings`` value and passes it down: the ``mt`` command
(``mt_cli``), the code location (``definitions.build_defs``), the run worker, the Pipes worker (``mt_worker``) and the
viewer. Nothing else reads ``os.environ``; ``mt_core`` receives what it needs as arguments or, for the process-wide
values of the science code (torch threads, scratch and model folders, failpoints), as one ``mt_core.runtime.Runtime``
that ``Settings.install`` puts in place. A test builds as many ``Settings`` as it likes in one process
(``Settings.from_env({...})`` or ``dataclasses.replace``).

The variables, with their defaults (README and docs/SCALING.md say what each is for):

====================  ==================================================================================
DAGSTER_HOME          the Dagster instance (default ``<project>/.dagster``)
MT_STUDIES            os.pathsep-separated study YAMLs served by the code location
MT_STUDY              the study a command is about (default: the first of MT_STUDIES, else the villain study)
MT_PROFILE            the profile every study is loaded under (default ``tiny``)
MT_ARTIFACTS          the artefact root (``{study}``/``{profile}`` filled in; a path or an object store URL)
MT_COMPUTE            where heavy steps run: inline | pipes | worker | ray (default inline for tiny, else worker)
MT_WORKER_IDLE_S      how long a worker that stays (MT_COMPUTE=worker) waits for its next step (default 900)
MT_CHILD_PREFIX       a command the pipes and ray modes start a step's process under (shell words, e.g.
                      ``nsys profile -o step``, ``numactl -N 0``, ``nice -n 10``; default none)
RAY_ADDRESS           the Ray dashboard under MT_COMPUTE=ray
MT_GPU_COUNT          GPUs to assume instead of counting /dev/nvidia*
MT_CPU_JOBS           on a machine without GPUs, runs of a stage at once (the gpu pool's default; default: cores, at most 8)
MT_CACHE              this host's copies of object-store artefacts and the judge cache (default ~/.cache/mt)
MT_MODELS             where random-weight snapshots are written (default ~/.cache/marker_transfer/models)
MT_SCRATCH            merged weights for vLLM, for the session (default: the system temp folder)
MT_THREADS            torch threads (default: every core)
MT_RETRY_DELAY_S      first wait of a step retry (default 15; tests set 0)
MT_VIEW_URL           where the UI's viewer links point (default http://127.0.0.1:8765)
MT_DEBUG              show tracebacks and Dagster's own log of a failed step
MT_FAILPOINT[_HOLD]   fault injection (tests only: mt_core.faults); MT_NODE names a Ray worker node
ANTHROPIC_API_KEY     the Claude judge's key (read where used: ``secret``); ANTHROPIC_BASE_URL another endpoint
WANDB_*               MODE, PROJECT, ENTITY, BASE_URL, DIR override the study's W&B settings; API_KEY logs in
====================  ==================================================================================
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from mt_core.config import DEFAULT_PROFILE, DEFAULT_STUDY, PROJECT_ROOT
from mt_core.runtime import Runtime

__all__ = ["Settings", "PROJECT_ROOT", "DEFAULT_STUDY", "DEFAULT_PROFILE", "secret", "inherited_env", "ray_job_env",
           "without_ray_env", "visible_devices", "lease_device"]
COMPUTE_MODES = ("inline", "pipes", "worker", "ray")
# what a Ray job inherits from the step's environment: the project's settings, never a credential
FORWARD = re.compile(r"^(MT_|HF_|TRANSFORMERS_|TOKENIZERS_|WANDB_|OMP_|PYTORCH_)")
SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|AUTH")
# libraries' own switches the platform sets unless the user did (no tokenizer thread pools fighting torch, no hub)
LIBRARY_DEFAULTS = {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
# a worker that stays pushes weights into its held vLLM engine in memory: the engine's core runs in the worker's process
WORKER_LIBRARY_DEFAULTS = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}


@dataclass(frozen=True)
class Wandb:
    """The standard W&B variables; each left unset leaves the study's value."""
    mode: str | None = None
    project: str | None = None
    entity: str | None = None
    host: str | None = None
    dir: str | None = None


@dataclass(frozen=True)
class Settings:
    dagster_home: Path
    studies: tuple[Path, ...]  # every study of the code location; the first is the default
    study: Path | None = None  # the study a command is about, when named ($MT_STUDY, --study)
    profile: str = DEFAULT_PROFILE
    compute: str | None = None  # None: inline for tiny, pipes otherwise (``compute_mode``)
    ray_address: str | None = None
    worker_idle_s: float = 900.0  # a worker that stays exits after this long without a step
    child_prefix: tuple[str, ...] = ()  # words before ``python -m mt_worker`` of a pipes or ray step's process
    gpu_count: int | None = None
    cpu_jobs: int = 0  # 0: every core, at most 8 (``jobs``)
    cache: Path = Path.home() / ".cache" / "mt"
    retry_delay_s: float = 15.0
    view_url: str = "http://127.0.0.1:8765"
    debug: bool = False
    anthropic_base_url: str | None = None
    wandb: Wandb = Wandb()
    runtime: Runtime = Runtime()
    env: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)  # what it was read from

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **override) -> "Settings":
        """The settings of ``env`` (default: this process's environment), then ``override`` (e.g. ``study=``,
        ``profile=`` from a command line)."""
        env = dict(os.environ if env is None else env)

        def get(k: str) -> str | None:
            return env.get(k) or None

        listed = tuple(Path(p).resolve() for p in (get("MT_STUDIES") or "").split(os.pathsep) if p)
        study = Path(get("MT_STUDY")).resolve() if get("MT_STUDY") else None
        mode = get("WANDB_MODE")
        s = cls(
            dagster_home=Path(get("DAGSTER_HOME") or PROJECT_ROOT / ".dagster").resolve(),
            studies=listed or ((study,) if study else (DEFAULT_STUDY,)),
            study=study,
            profile=get("MT_PROFILE") or DEFAULT_PROFILE,
            compute=get("MT_COMPUTE"),
            ray_address=get("RAY_ADDRESS"),
            worker_idle_s=float(get("MT_WORKER_IDLE_S") or cls.worker_idle_s),
            child_prefix=tuple(shlex.split(get("MT_CHILD_PREFIX") or "")),
            gpu_count=int(env["MT_GPU_COUNT"]) if get("MT_GPU_COUNT") else None,
            cpu_jobs=int(get("MT_CPU_JOBS") or 0),
            cache=Path(get("MT_CACHE") or Path.home() / ".cache" / "mt"),
            retry_delay_s=float(get("MT_RETRY_DELAY_S") or 15),
            view_url=get("MT_VIEW_URL") or cls.view_url,
            debug=(get("MT_DEBUG") or "0") != "0",
            anthropic_base_url=get("ANTHROPIC_BASE_URL"),
            wandb=Wandb(mode="offline" if mode == "dryrun" else mode, project=get("WANDB_PROJECT"),
                        entity=get("WANDB_ENTITY"), host=get("WANDB_BASE_URL"), dir=get("WANDB_DIR")),
            runtime=Runtime(
                artifacts=get("MT_ARTIFACTS"),
                models=Path(get("MT_MODELS") or Runtime.models).expanduser(),
                scratch=Path(get("MT_SCRATCH")) if get("MT_SCRATCH") else None,
                threads=int(get("MT_THREADS") or 0),
                failpoint=get("MT_FAILPOINT"), failpoint_hold=get("MT_FAILPOINT_HOLD"), node=get("MT_NODE")),
            env=env,
        )
        return s.with_choice(**override) if override else s

    @classmethod
    def defaults(cls) -> "Settings":
        """The settings of an empty environment (every default)."""
        return cls.from_env({})

    def with_choice(self, *, study: str | os.PathLike | None = None, profile: str | None = None,
                    debug: bool | None = None) -> "Settings":
        """These settings with a command line's choices: ``--study`` (also served by the code location),
        ``--profile``, ``--debug``."""
        s = self
        if study is not None:
            path = Path(study).resolve()
            # a study outside $MT_STUDIES stays outside: the code location then says it does not serve it
            listed = path in s.studies or bool(s.env.get("MT_STUDIES"))
            s = dataclasses.replace(s, study=path, studies=s.studies if listed else (path,))
        if profile:
            s = dataclasses.replace(s, profile=profile)
        if debug:
            s = dataclasses.replace(s, debug=True)
        return s

    # ---- derived values ---------------------------------------------------------------------------------------------
    @property
    def current_study(self) -> Path:
        """The study a command is about: the one named, else the first of the code location's."""
        return self.study or self.studies[0]

    @property
    def jobs(self) -> int:
        """On a machine without GPUs, how many runs of a stage execute at once, each in a forked process with one torch
        thread (``install_forked``): a tiny model's step leaves most of a second core idle."""
        return max(1, self.cpu_jobs or min(8, os.cpu_count() or 1))

    def compute_mode(self, profile: str | None = None) -> str:
        # tiny: torch is imported once per run anyway; a GPU study keeps its base and engine in a worker per GPU
        mode = self.compute or ("inline" if (profile or self.profile) == "tiny" else "worker")
        if mode not in COMPUTE_MODES:
            raise ValueError(f"MT_COMPUTE={mode!r} is not one of {', '.join(COMPUTE_MODES)}")
        return mode

    @property
    def artifacts(self) -> str | None:
        """$MT_ARTIFACTS, the artefact root's template (``mt_core.layout.artefact_root``)."""
        return self.runtime.artifacts

    @property
    def workers(self) -> Path:
        """Where workers that stay keep their locks, pid files and logs (``mt_resources.worker``)."""
        return self.dagster_home / "workers"

    @property
    def workspace(self) -> Path:
        return PROJECT_ROOT / "workspace.yaml"

    # ---- the environment of processes this one starts --------------------------------------------------------------
    def to_env(self) -> dict[str, str]:
        """The environment of a process that must see these settings (the Dagster daemon and its run workers, a
        webserver, a Pipes child): the environment they were read from, with every setting written back, so a
        ``--study`` or ``--profile`` chosen on the command line reaches the code location there."""
        env = {**LIBRARY_DEFAULTS, **self.env, "DAGSTER_HOME": str(self.dagster_home), "MT_PROFILE": self.profile,
               "MT_STUDIES": os.pathsep.join(map(str, self.studies))}
        if self.study is not None:
            env["MT_STUDY"] = str(self.study)
        if self.debug:
            env["MT_DEBUG"] = "1"
        env["PYTHONPATH"] = _importable(env.get("PYTHONPATH"))
        return env

    # ---- this process ----------------------------------------------------------------------------------------------
    def install(self, worker: bool = False) -> "Settings":
        """Make these the settings of this process, once at its entry point: the science code's ``Runtime`` and the
        libraries' own switches (``LIBRARY_DEFAULTS``, and for a worker that stays ``WORKER_LIBRARY_DEFAULTS``,
        unless set)."""
        from mt_core import runtime

        runtime.configure(self.runtime)
        for k, v in {**LIBRARY_DEFAULTS, **(WORKER_LIBRARY_DEFAULTS if worker else {})}.items():
            os.environ.setdefault(k, v)
        return self

    def install_forked(self, threads: int | None = 1) -> "Settings":
        """Make these the settings of a process forked from this one (`mt run`'s side-by-side runs), with ``threads``
        torch threads (None: as configured). Side by side each gets one: they share the cores. More than one is safe
        only where the parent never started its OpenMP pool: the fork copies the pool without its threads, and a
        parallel region of more than one thread then waits for them forever. Written to the environment too, for code
        that reads it again there."""
        if threads is None:
            return self.install()
        os.environ["MT_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(threads)
        return dataclasses.replace(self, runtime=dataclasses.replace(self.runtime, threads=threads)).install()


def secret(name: str) -> str | None:
    """A credential (ANTHROPIC_API_KEY, WANDB_API_KEY), read where it is used: never held in a settings value or a
    resource's config, which the UI and logs show."""
    return os.environ.get(name) or None


def inherited_env(**extra: str) -> dict[str, str]:
    """This process's environment plus ``extra``: what a child process that reads its own settings inherits (a Pipes
    worker, a local Ray node), with the project importable."""
    env = {**LIBRARY_DEFAULTS, **os.environ, **extra}
    env["PYTHONPATH"] = _importable(os.environ.get("PYTHONPATH"))
    return env


def _importable(pythonpath: str | None) -> str:
    """``pythonpath`` with the project first, so a child process imports it from any working directory."""
    return os.pathsep.join(p for p in (str(PROJECT_ROOT), pythonpath) if p)


def ray_job_env() -> dict[str, str]:
    """What a Ray job may inherit: the project's settings, never a credential (Ray shows it in its dashboard)."""
    env = inherited_env()
    forwarded = {k: v for k, v in env.items() if FORWARD.match(k) and not SECRET.search(k)}
    return {**forwarded, "PYTHONPATH": env["PYTHONPATH"]}


def without_ray_env() -> dict[str, str]:
    """This environment minus Ray's own variables (a local Ray node must not join another cluster)."""
    return {k: v for k, v in inherited_env().items() if not k.startswith("RAY_")}


def visible_devices() -> str | None:
    """CUDA_VISIBLE_DEVICES of this process (what ``lease_device`` set, or what the process was started with)."""
    return os.environ.get("CUDA_VISIBLE_DEVICES")


@contextlib.contextmanager
def lease_device(index: int):
    """CUDA_VISIBLE_DEVICES := ``index`` for the work under it (a Pipes child inherits it), restored after."""
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old
