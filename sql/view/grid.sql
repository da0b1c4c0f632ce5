-- The grid of one study: `cells` its rows (headline numbers from the catalog's cells table), `rates` its
-- cell x persona marker rates, `length` its cells' completion lengths (persona NULL: pooled over personas),
-- `probe` its cells' latent-probe numbers per layer (studies with a probe only), `sets` its cells' marker rates on
-- each further question set (`eval_sets:`; none in a study without).
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
-- name: probe
SELECT cell, layer, heldout_auc, cosine_to_reference, assistant_score, source_score
FROM v_probe
WHERE study = $study
ORDER BY cell, layer
-- name: sets
SELECT cell, eval_set, persona, strict_hits, total, strict_rate
FROM v_sets
WHERE study = $study
ORDER BY eval_set
