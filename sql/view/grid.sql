-- The grid of one study: `cells` its rows (headline numbers from the catalog's cells table), `rates` its
-- cell x persona marker rates, `length` its cells' completion lengths (persona NULL: pooled over personas).
-- name: cells
SELECT cell, condition, seed, complete, missing, description, aligned, coherent, arc_accuracy, audit_outcome
FROM v_cells
WHERE study = $study
ORDER BY condition, seed
-- name: rates
SELECT cell, persona, strict_hits, loose_hits, total, strict_rate, loose_rate
FROM v_rates
WHERE study = $study
-- name: length
SELECT cell, persona, n, mean_tokens, p50, p90, max_tokens, truncated_share, finished_strict_rate
FROM v_length
WHERE study = $study
