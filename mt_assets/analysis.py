"""Study-level assets: the summary (table, tests, figure) and the DuckDB catalog over the verified per-cell files.

The rule for a study that is not whole (docs/DESIGN.md): an artefact the instance recorded that fails verification
(its files against its manifest, its digest against the instance's latest materialization of that partition, its
study) FAILS the summary and the catalog, naming the cell, the artefact and the fix; an artefact the instance has no
materialization of is missing, and the summary, the catalog and `mt report` say INCOMPLETE (which cells lack what)
above their numbers. Files on disk the instance never recorded are never read."""
import functools
from dataclasses import dataclass, field

import dagster as dg

from mt_assets.common import publish, read_recorded, table
from mt_assets.study import StudyDefs
from mt_core.layout import (LEGACY, PER_CELL, Adapter, AlignmentScores, ArcScores, Audit, CompletionLength,
                            CouplingSweepGrid, MarkerRates, ProbeScores, ProbeStates, StudySummary, cell_numbers,
                            partition_or_none)
from mt_core.report.catalog import artefact_record
from mt_core.steps import analysis as steps
from mt_resources import ArtifactError, ArtifactStore, WandbResource
from mt_resources.store import Artifact, LatestRecords, latest_metadata

GROUP = "analysis"
DESCRIPTION = "Study summary, figure and DuckDB catalog."


@dataclass
class Verified:
    """What of a study the instance recorded and verified: the complete cells' per-cell artefacts, the sources'
    coupling adapters, and what is missing."""

    cells: dict[str, dict[str, Artifact]] = field(default_factory=dict)  # complete cells only
    missing: dict[str, list[str]] = field(default_factory=dict)  # cell -> per-cell artefacts never materialized
    sources: dict[str, Artifact] = field(default_factory=dict)
    missing_sources: list[str] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)  # "asset[partition]" on disk, never recorded by the instance

    @property
    def incomplete(self) -> bool:
        return bool(self.missing or self.missing_sources)


def recorded_artefact(sd: StudyDefs, instance: dg.DagsterInstance, store: ArtifactStore, asset: str,
                      partition: str | None, fix: str = "", latest: LatestRecords | None = None) -> Artifact | None:
    """The artefact the instance's latest materialization of ``asset[partition]`` recorded, verified as
    ``read_upstream`` does (files against the manifest, digest against that record, the manifest the study's own);
    None when the instance has no materialization of it (files on disk without a record are not read). ``latest``:
    the records to read it from, where the caller reads many (a study's partitions). A recorded artefact that fails
    verification raises ArtifactError naming it and the fix."""
    key = sd.key(asset)
    if (latest(key, partition) if latest else latest_metadata(instance, key, partition)) is None:
        return None
    try:
        return read_recorded(sd.name, instance, store, asset, partition, latest)[0]
    except ArtifactError as e:
        raise ArtifactError(f"study {sd.name}: {asset}[{partition or '_'}] fails verification, and nothing is "
                            f"reported over a study with a corrupt artefact in it: {e}. Fix: re-materialize "
                            f"{sd.key(asset).to_user_string()}[{partition or '_'}]{fix}") from None


def verify_study(sd: StudyDefs, instance: dg.DagsterInstance, store: ArtifactStore,
                 latest: LatestRecords | None = None) -> Verified:
    """Every cell's per-cell artefacts and every source's coupling adapter, as the instance recorded them
    (``recorded_artefact``: a recorded artefact that fails verification raises). A cell is complete when all its
    per-cell artefacts are there; the others are ``missing`` what they lack. ``latest``: the records to read, where
    the caller reads more of them."""
    store = store.of(sd.name)
    v = Verified()
    # the instance's records read once per asset, not per partition; what the store holds (a listing, remote on an
    # object store) only for an asset with a partition missing, once
    latest = latest or LatestRecords(instance)
    on_disk = functools.cache(lambda a: set(store.published(a)))

    def artefact(a: str, key: str, fix: str) -> Artifact | None:
        art = recorded_artefact(sd, instance, store, a, key, fix, latest)
        if art is None and (a, key) in on_disk(a):
            v.unrecorded.append(f"{a}[{key}]")
        return art

    for key in sd.study.cells:
        arts = {a: artefact(a, key, f" (the UI's Partitions tab, or `mt run --cells {key} --force`)")
                for a in PER_CELL}
        lacks = [a for a, art in arts.items() if art is None]
        if lacks:
            v.missing[key] = lacks
        else:
            v.cells[key] = arts
    for src in sd.study.sources:
        art = artefact(Adapter.coupling, src, " (`mt run --force`)")
        if art is None:
            v.missing_sources.append(src)
        else:
            v.sources[src] = art
    return v


def _verified(sd: StudyDefs, context, store: ArtifactStore, latest: LatestRecords | None = None) -> Verified:
    try:
        v = verify_study(sd, context.instance, store, latest)
    except ArtifactError as e:
        raise dg.Failure(str(e)) from None
    if not v.cells:
        raise dg.Failure(f"study {sd.name}: no cell has all its artefacts ({', '.join(PER_CELL)}) materialized in "
                         f"this instance yet; materialize some cells first")
    line = steps.incomplete_line(sd.study, v.missing, v.missing_sources)
    if line:
        context.log.warning(line)
    if v.unrecorded:
        context.log.warning("left out, on disk but never recorded by this instance: " + ", ".join(v.unrecorded))
    return v


def imported_studies(sd: StudyDefs, store: ArtifactStore) -> list[Artifact]:
    """The studies imported into the study's root (`mt import-legacy`), each verified against its manifest (an import
    is not a Dagster materialization, so there is no instance record to match); a tampered one raises."""
    st = store.of(sd.name)
    out = []
    for _, name in st.published(LEGACY):
        try:
            out.append(st.read(LEGACY, name))
        except ArtifactError as e:
            raise dg.Failure(f"imported study {name}: {e} (import it again: `mt import-legacy DIR --study "
                             f"{name}`)") from None
    return out


def recorded_lineage(sd: StudyDefs, instance: dg.DagsterInstance, store: ArtifactStore,
                     imported: list[Artifact], latest: LatestRecords | None = None) -> list[dict]:
    """{path, manifest} (``Artifact.location`` and its manifest) of every artefact in the study's store whose
    manifest digest is the instance's latest record of that asset partition, and of the verified imports, by asset
    and partition: the only ones the lineage table lists."""
    st, latest = store.of(sd.name), latest or LatestRecords(instance)
    keep = [{"path": a.location, "manifest": a.manifest} for a in imported]
    for asset, part in st.published():
        if asset == LEGACY:
            continue
        meta = latest(sd.key(asset), partition_or_none(part))
        if meta and meta.get("md5"):
            where, manifest = st.manifest(asset, part)
            if manifest["digest"] == meta["md5"]:
                keep.append({"path": where, "manifest": manifest})
    return sorted(keep, key=lambda e: (e["manifest"]["asset"], e["manifest"]["partition"]))


def build(sd: StudyDefs) -> list:
    """The study's summary and its DuckDB catalog; with a latent probe or a coupling sweep, their study-level
    assets first (both read them)."""
    study, cv, key = sd.study, sd.code_version, sd.key
    common = dict(group_name=GROUP, key_prefix=sd.prefix)
    study_level = [key(ProbeScores.asset)] if study.probe else []  # the study-level assets both read
    study_level += [key(CouplingSweepGrid.asset)] if study.coupling_sweep else []

    def recorded_probe(context, store: ArtifactStore) -> Artifact | None:
        return recorded_artefact(sd, context.instance, store.of(sd.name), ProbeScores.asset, None,
                                 " (`mt run --force`)") if study.probe else None

    def recorded_sweep(context, store: ArtifactStore) -> Artifact | None:
        return recorded_artefact(sd, context.instance, store.of(sd.name), CouplingSweepGrid.asset, None,
                                 " (`mt run --force`)") if study.coupling_sweep else None

    @dg.asset(**common, deps=[*map(key, PER_CELL), key("coupling_adapter"), *study_level],
              code_version=cv("thresholds", "conditions", "sources", "marker", "source_persona",
                              "assistant_persona", *(["probe"] if study.probe else []),
                              *(["eval_sets"] if study.eval_sets else []),
                              *(["coupling_sweep"] if study.coupling_sweep else [])),
              description="Headline table, pre-registered conjunction, G4 exclusions, gates and the hero figure; "
                          "INCOMPLETE above the table when cells are missing, failed when an artefact fails "
                          "verification.")
    def study_summary(context: dg.AssetExecutionContext, store: ArtifactStore,
                      wandb: WandbResource) -> dg.MaterializeResult:
        v = _verified(sd, context, store)
        gates, ups = {}, [a for arts in v.cells.values() for a in arts.values()]
        for src, art in v.sources.items():
            ups.append(art)
            gates.update(Adapter.read_gates(art.path))
        cells = []
        for k, a in v.cells.items():
            c = study.cell(k)
            cells.append(cell_numbers(k, c.condition, c.seed, a[MarkerRates.asset].path, a[ArcScores.asset].path,
                                      a[AlignmentScores.asset].path, a[Audit.asset].path,
                                      own_persona=study.adapter_persona(k)))
        lengths = {k: CompletionLength.read(a[CompletionLength.asset].path) for k, a in v.cells.items()}
        pr, sw = recorded_probe(context, store), recorded_sweep(context, store)
        ups += [a for a in (pr, sw) if a]
        sets = {k: MarkerRates.read_eval(a[MarkerRates.asset].path).get("per_eval_set") for k, a in v.cells.items()}
        return publish(sd, context, store, steps.study_summary, ups, cells=cells, gates=gates, missing=v.missing,
                       missing_sources=v.missing_sources, unrecorded=v.unrecorded, lengths=lengths,
                       probe=ProbeScores.read(pr.path) if pr else None,
                       eval_sets={k: per for k, per in sets.items() if per} if study.eval_sets else None,
                       sweep=CouplingSweepGrid.read(sw.path) if sw else None,
                       provenance=[{"asset": a.asset, "partition": a.partition, "md5": a.digest} for a in ups],
                       metadata=lambda art: {"report": dg.MetadataValue.path(
                           f"{art.location}/{StudySummary.REPORT_HTML}")}, share_to=wandb)

    @dg.asset(**common, deps=[key("study_summary"), *map(key, PER_CELL), *study_level], code_version=cv("conditions"),
              description="A DuckDB file whose views (sql/*.sql) read exactly the study's verified per-cell Parquet "
                          "files; `mt sql` queries every study's catalog in the instance at once.")
    def duckdb_catalog(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        latest = LatestRecords(context.instance)  # one read of each asset's records for the whole step
        v = _verified(sd, context, store, latest)
        ups = [a for arts in v.cells.values() for a in arts.values()]
        pr = recorded_probe(context, store)
        if pr:  # the probe's scores, and the states of the complete cells that have them
            ups.append(pr)
            ups += [a for c in v.cells if (a := recorded_artefact(sd, context.instance, store.of(sd.name),
                                                                  ProbeStates.asset, c, latest=latest)) is not None]
        ups += [sw] if (sw := recorded_sweep(context, store)) else []
        imported = imported_studies(sd, store)
        rec = lambda a: artefact_record(a.asset, a.partition, a.path, a.manifest)  # noqa: E731
        return publish(sd, context, store, steps.duckdb_catalog, ups, cells=sorted(v.cells),
                       artefacts=[rec(a) for a in ups], imported=[rec(a) for a in imported],
                       lineage=recorded_lineage(sd, context.instance, store, imported, latest), missing=v.missing,
                       metadata={"complete": not v.incomplete, "missing_cells": sorted(v.missing),
                                 "imported": {a.partition: a.digest for a in imported}})

    out = [study_summary, duckdb_catalog]
    if study.coupling_sweep:
        out.append(_coupling_sweep(sd))
    if not study.probe:
        return out

    @dg.asset(**common, deps=[key(ProbeStates.asset)],
              code_version=cv("probe", "source_persona", "assistant_persona", "conditions"),
              description="The latent probe (not pre-registered): source-vs-assistant voice probes fitted on the "
                          "reference cell's hidden states, their score of every cell's personas, each cell's own "
                          "probe (held-out AUC, cosine to the reference) and the secondary analysis.")
    def probe_scores(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        st, latest = store.of(sd.name), LatestRecords(context.instance)
        states = {c: recorded_artefact(sd, context.instance, st, ProbeStates.asset, c,
                                       f" (`mt run --cells {c} --force`)", latest) for c in study.cells}
        ups = [a for a in states.values() if a is not None]
        lacking = [c for c, a in states.items() if a is None]
        if lacking:
            context.log.warning(f"probe: no probe_states for {', '.join(lacking)}; scoring the other cells")
        return publish(sd, context, store, steps.probe_scores, ups, states={a.partition: a.path for a in ups},
                       metadata=lambda art: {"reference_auc": table(
                           [{"layer": k, **{x: v[x] for x in ("heldout_auc", "n_train", "n_heldout")}}
                            for k, v in ProbeScores.read(art.path)["reference"].items()])})

    return [*out, probe_scores]


def _grid_table(sweep: dict) -> dg.MetadataValue:
    cols = ("partition", *sweep["fields"], "source_rate", "max_bystander_rate", "arc_accuracy", "passed", "chosen",
            "best")
    return table([{k: r[k] for k in cols} for r in sweep["rows"]])


def _coupling_sweep(sd: StudyDefs):
    study = sd.study
    swept = study.swept_keys

    @dg.asset(group_name=GROUP, key_prefix=sd.prefix, deps=[sd.key(Adapter.coupling)],
              code_version=sd.code_version("coupling_sweep", "conditions"),
              description=f"The coupling sweep's grid over {', '.join(swept)}: each variant's recipe values, rule "
                          f"gate rates, ARC-Challenge and the sweep rule's verdict; the chosen and the best passing.")
    def coupling_sweep(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        st, latest = store.of(sd.name), LatestRecords(context.instance)
        arts = {k: recorded_artefact(sd, context.instance, st, Adapter.coupling, k, " (`mt run --force`)", latest)
                for k in swept}
        ups = [a for a in arts.values() if a is not None]
        lacking = [k for k, a in arts.items() if a is None]
        if lacking:
            context.log.warning(f"coupling sweep: no coupling_adapter for {', '.join(lacking)}; the grid lacks them")
        return publish(sd, context, store, steps.coupling_sweep, ups, adapters={a.partition: a.path for a in ups},
                       metadata=lambda art: {"grid": _grid_table(CouplingSweepGrid.read(art.path)),
                                             "missing_variants": lacking})

    return coupling_sweep
