-- Strict and loose marker rate per cell and persona.
CREATE OR REPLACE VIEW marker_rates AS
SELECT c.study, c.profile, r.cell, c.condition, c.seed, r.persona, r.strict_hits, r.loose_hits, r.total,
       r.strict_rate, r.loose_rate
FROM (SELECT *, regexp_extract(filename, '/marker_rates/([^/]+)/', 1) AS cell
      FROM read_parquet('{root}/marker_rates/*/rates.parquet', filename = true)) r
JOIN cells c USING (cell);
