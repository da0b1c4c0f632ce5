-- One row per marker-eval completion, with its strict/loose marker hits and the cell's condition and seed.
-- eval_set: 'in_distribution' for the eval set's own questions (question_set eval or betley: mt_core.config's
-- IN_DISTRIBUTION, the questions every pre-registered number reads), else the name of the study's further set
-- (`eval_sets:` in its YAML, e.g. ood).
CREATE OR REPLACE VIEW completions AS
SELECT m.study, m.profile, m.cell, c.condition, c.seed, m.sample_id, m.persona, m.question_idx, m.question, m.question_set,
       CASE WHEN m.question_set IN ('eval', 'betley') THEN 'in_distribution' ELSE m.question_set END AS eval_set,
       m.sample_idx, m.text, m.n_tokens, m.finish_reason, h.strict_hit, h.loose_hit
FROM read_parquet({files:marker_completions.COMPLETIONS}) m
JOIN cells c USING (study, profile, cell)
LEFT JOIN read_parquet({files:marker_rates.HITS}) h
       USING (study, profile, cell, persona, question_idx, sample_idx);

-- The strict marker rate per cell, persona and eval set (a study without further sets has in_distribution only).
CREATE OR REPLACE VIEW marker_rates_by_set AS
SELECT study, profile, cell, condition, seed, eval_set, persona, count(*) FILTER (WHERE strict_hit) AS strict_hits,
       count(*) AS total, avg(strict_hit::INT) AS strict_rate
FROM completions
GROUP BY ALL;
