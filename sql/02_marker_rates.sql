-- Strict and loose marker rate per cell and persona (imported legacy studies included).
CREATE OR REPLACE VIEW marker_rates AS
SELECT r.study, r.profile, r.cell, c.condition, c.seed, r.persona, r.strict_hits, r.loose_hits, r.total,
       r.strict_rate, r.loose_rate
FROM read_parquet({files:marker_rates.RATES}, union_by_name = true) r
JOIN cells c USING (study, profile, cell);
