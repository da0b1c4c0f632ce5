"""The studies this code location serves, and what the asset modules build for each one.

Every study of the settings (``mt_settings.Settings.studies``: ``$MT_STUDIES``, else ``$MT_STUDY``, else the villain
study) is loaded under one profile (``Settings.profile``). Each gets its own asset keys (prefixed with the study's name:
``marker_transfer_villain/coupling_adapter``), partitions, checks and jobs (``<study>__cell_job``), so several studies
live side by side in one Dagster instance, one UI and one catalog without overwriting each other's materializations.
"""
from __future__ import annotations

import dagster as dg

from mt_core.config import ConfigError, Study, load_study
from mt_core.layout import artefact_root
from mt_run.runs import STAGES
from mt_settings import Settings


class StudyDefs:
    """One study as the asset modules see it: its keys, partitions and code versions; once built (``mt_assets.build``)
    also its assets and jobs."""

    def __init__(self, study: Study, settings: Settings | None = None):
        self.study, self.settings = study, settings or Settings.defaults()
        self.name = study.name
        self.root = artefact_root(study, self.settings.artifacts)
        self.cells_partitions = dg.StaticPartitionsDefinition(study.cells)
        self.coupling_partitions = dg.StaticPartitionsDefinition(study.coupling_keys)
        self.cell_to_source = dg.StaticPartitionMapping(study.cell_source_map())
        self.assets: list = []
        self.jobs: dict[str, dg.UnresolvedAssetJobDefinition] = {}
        self._version_inputs: dict[str, dict] = {}  # code version -> what it covers (``version_inputs``)

    @property
    def prefix(self) -> list[str]:
        return [self.name]

    def key(self, asset: str) -> dg.AssetKey:
        """The Dagster key of one of this study's assets (artefact names, as in the store and manifests, are bare)."""
        return dg.AssetKey([self.name, asset])

    def op(self, name: str) -> str:
        """A node name unique in the code location (a multi-asset's or a check's op)."""
        return f"{self.name}__{name}"

    def node(self, name: str):
        """The built asset or check definition of node ``name`` (bare: ``coupling_adapter``, ``cell_generations``,
        ``coupling_adapter_gates``), e.g. to materialize it in a test."""
        found = [a for a in self.assets if a.node_def.name == self.op(name)]
        if not found:
            raise KeyError(f"no node {name!r} in study {self.name!r}")
        return found[0]

    def job(self, stage: str) -> str:
        """The name of this study's job for ``stage`` (one of ``STAGES``): ``<study>__<stage>``."""
        if stage not in STAGES:
            raise KeyError(f"{stage!r} is not a stage ({', '.join(STAGES)})")
        return f"{self.name}__{stage}"

    def code_version(self, *paths: str, files: tuple[str, ...] = ()) -> str:
        """An asset's code version: the study values its step uses (dotted config paths) and the contents of the files
        it reads by path, so the UI shows "code version changed" after a YAML edit and `mt run` redoes exactly what it
        affects. What it covers is kept for ``version_inputs``: the asset definitions stay the one list of paths."""
        from mt_core.io import md5_file

        md5s = {f: md5_file(self.study.path(f)) for f in files}
        version = self.study.version_of(*paths, extra="".join(md5s.values()))
        self._version_inputs[version] = {"values": self.study.values_of(*paths), "files": md5s}
        return version

    def version_inputs(self, version: str | None) -> dict | None:
        """What code version ``version`` of one of this study's assets covers: {"values": {path: value}, "files":
        {file: md5}}. Each materialization records it (``code_version_inputs``), so that `mt run` can name the study
        fields that changed since (``mt_run.plan.changed_inputs``)."""
        return self._version_inputs.get(version) if version else None


def load_studies(settings: Settings) -> list[Study]:
    """The studies of the settings under their one profile; two with one name, or with one artefact root, cannot
    share a code location."""
    studies = [load_study(p, settings.profile) for p in settings.studies]
    for i, s in enumerate(studies):
        for t in studies[:i]:
            if s.name == t.name:
                raise ConfigError(f"{s.file} and {t.file} are both study {s.name!r}: one code location serves each "
                                  f"study once (asset keys are prefixed with the study's name)")
            if artefact_root(s, settings.artifacts) == artefact_root(t, settings.artifacts):
                raise ConfigError(f"studies {t.name!r} and {s.name!r} would share the artefact root "
                                  f"{artefact_root(s, settings.artifacts)} ($MT_ARTIFACTS names one study's root; put "
                                  f"{{study}} in it or unset it)")
    return studies
