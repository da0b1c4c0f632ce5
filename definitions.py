"""The one Dagster code location of the platform: assets, checks, jobs and resources for every configured study.

Dagster's processes (the daemon, the webserver, run workers: ``workspace.yaml``) load ``defs``, built from their
environment; everything else builds its own with ``build_defs(settings)`` (``mt_assets.location``). Each study's asset
keys are prefixed with its name (``marker_transfer_villain/coupling_adapter``) and its jobs are ``<study>__<stage>``,
so several studies share one instance, one UI and one catalog.
"""
from mt_assets.location import CodeLocation, build_defs
from mt_settings import Settings

__all__ = ["CodeLocation", "build_defs", "defs", "LOCATION"]

LOCATION = CodeLocation(Settings.from_env().install())  # its studies by name: LOCATION.studies
defs = LOCATION.defs
