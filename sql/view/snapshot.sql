-- What the viewer reads, copied once per opening of the verified catalogs into memory (mt_view/db.py makes each
-- query the temporary table v_<name>): reading the Parquet files on every request would cost whole-study pages
-- (search, the last page) several hundred ms. The judge's raw reply is read from the verified score files, since
-- the judge_scores view leaves it out. A column with no value in a study (no judge error, an offline judge's raw
-- reply) is read from Parquet as INTEGER, hence the casts.
-- name: cells
SELECT study, profile, cell, condition, seed, complete, missing, description, aligned, coherent, arc_accuracy,
       audit_outcome
FROM cells
-- name: rates
SELECT study, cell, persona, strict_hits, loose_hits, total, strict_rate, loose_rate
FROM marker_rates
-- name: sets
SELECT study, cell, eval_set, persona, strict_hits, total, strict_rate
FROM marker_rates_by_set
WHERE eval_set <> 'in_distribution'
-- name: length
SELECT study, cell, persona, n, mean_tokens, p50, p90, max_tokens, n_truncated, truncated_share, finished_strict_rate
FROM completion_length
-- name: completions
SELECT study, cell, condition, seed, sample_id, persona, question_idx, question, question_set, sample_idx, text,
       n_tokens, finish_reason, strict_hit, loose_hit
FROM completions
ORDER BY study, condition, seed, persona, question_idx, sample_idx
-- name: alignment
SELECT j.study, j.cell, j.condition, j.seed, j.sample_id, j.question_idx, j.question, j.sample_idx, j.response,
       a.n_tokens, a.finish_reason, j.aligned, j.coherent, j.reasoning, j.error::VARCHAR AS error, j.judge_model,
       j.judge_offline, r.raw_text::VARCHAR AS raw_text
FROM judge_scores j
LEFT JOIN alignment_completions a USING (study, cell, sample_id)
LEFT JOIN (SELECT study, cell, sample_id, raw_text
           FROM read_parquet({files:alignment_scores.ROWS}, union_by_name = true)) r USING (study, cell, sample_id)
ORDER BY j.study, j.condition, j.seed, j.question_idx, j.sample_idx
-- name: probe
-- with: probe_cells
SELECT study, cell, layer, heldout_auc, cosine_to_reference, assistant_score, source_score
FROM probe_cells
