-- Every artefact and each upstream artefact its manifest recorded, with `stale`: the recorded upstream md5 is no
-- longer the md5 of that upstream artefact in the store (it was re-materialized since). No upstream: not stale.
CREATE OR REPLACE VIEW lineage AS
SELECT l.study, l.profile, l.asset, l.partition, l.run_id, l.md5, l.created, l.path,
       l.upstream_asset, l.upstream_partition, l.upstream_run_id, l.upstream_md5,
       cur.md5 AS upstream_current_md5,
       coalesce(l.upstream_asset IS NOT NULL AND l.upstream_md5 IS DISTINCT FROM cur.md5, false) AS stale
FROM artefact_lineage l
LEFT JOIN (SELECT DISTINCT study, asset, partition, md5 FROM artefact_lineage) cur
       ON cur.study IS NOT DISTINCT FROM l.study AND cur.asset = l.upstream_asset
      AND cur.partition = l.upstream_partition;
