"""What every command starts from: the settings (the environment read once, then the command line's choices), the
Dagster instance they name, and the code location built from them."""
from __future__ import annotations

import shutil

from mt_settings import PROJECT_ROOT, Settings


def settings_of(args) -> Settings:
    """This command's settings, installed for this process; the instance folder made ready (dagster.yaml copied in)."""
    s = Settings.from_env().with_choice(study=getattr(args, "study", None), profile=getattr(args, "profile", None),
                                        debug=getattr(args, "debug", False)).install()
    s.dagster_home.mkdir(parents=True, exist_ok=True)
    if not (s.dagster_home / "dagster.yaml").exists():
        shutil.copyfile(PROJECT_ROOT / "dagster.yaml", s.dagster_home / "dagster.yaml")
    return s


def instance(settings: Settings):
    """The Dagster instance of ``settings`` (its DAGSTER_HOME), to use as a context manager."""
    import dagster as dg

    return dg.DagsterInstance.from_config(str(settings.dagster_home))


def location(settings: Settings):
    """The code location of ``settings``: every study it serves, their Definitions (``definitions.CodeLocation``)."""
    from mt_assets.location import CodeLocation

    return CodeLocation(settings)


def current_study(settings: Settings):
    """The study a command is about, loaded (a bad file is a ConfigError naming file, line and field)."""
    from mt_core.config import load_study

    return load_study(settings.current_study, settings.profile)
