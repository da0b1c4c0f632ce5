"""Across cells: statistics (``stats``), the hero figure (``figure``), the DuckDB catalog (``catalog``), lineage
(``lineage``), the reference's results (``legacy``) and the protocol table of docs/PROTOCOL_PARITY.md
(``protocol_table``)."""
