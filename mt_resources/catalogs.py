"""Which DuckDB catalogs the Dagster instance recorded, one per study: what `mt sql` and `mt view` open."""
from __future__ import annotations

from pathlib import Path


def study_catalogs(instance, cache: Path, root: Path | str | None = None) -> dict[str, tuple[Path, str | None]]:
    """{study: (its DuckDB catalog file on this host, the md5 the instance recorded for it)} for every study whose
    ``<study>/duckdb_catalog`` the instance materialized (with ``root``: the one stored under that artefact root);
    ``open_catalogs`` checks the file against that record. A catalog on an object store (its recorded path is a
    version's URL) is read through the store into this host's cache folder ``cache`` ($MT_CACHE)."""
    from mt_core.layout import Catalog, artefact_dir
    from mt_core.report.catalog import CatalogError
    from mt_resources.store import ArtifactError, is_url, latest_metadata

    out = {}
    for key in instance.get_asset_keys():
        if len(key.path) == 2 and key.path[1] == Catalog.asset:
            meta = latest_metadata(instance, key, None) or {}
            where = meta.get("path")
            if not where:
                continue
            if root is not None and not (where.startswith(f"{str(root).rstrip('/')}/{Catalog.asset}/")
                                         if is_url(root) else Path(where) == artefact_dir(root, Catalog.asset)):
                continue
            if is_url(where):
                from mt_resources.objstore import artefact_cache, read_url

                try:
                    where = read_url(where, artefact_cache(cache)).path
                except ArtifactError as e:
                    raise CatalogError(f"the catalog of study {key.path[0]}: {e}") from None
            out[key.path[0]] = (Path(where) / Catalog.FILE, meta.get("md5"))
    return out
