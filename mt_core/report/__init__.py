"""Across cells: statistics (``stats``), the hero figure (``figure``), the HTML report (``html``), the DuckDB catalog
(``catalog``), lineage (``lineage``) and the reference's results (``legacy``). The protocol table of
docs/PROTOCOL_PARITY.md is no part of the pipeline: ``scripts/parity/``."""
