-- One row per marker-eval completion, with its strict/loose marker hits and the cell's condition and seed.
CREATE OR REPLACE VIEW completions AS
SELECT m.study, m.profile, m.cell, c.condition, c.seed, m.sample_id, m.persona, m.question_idx, m.question, m.question_set,
       m.sample_idx, m.text, m.n_tokens, m.finish_reason, h.strict_hit, h.loose_hit
FROM read_parquet({files:marker_completions.COMPLETIONS}) m
JOIN cells c USING (study, profile, cell)
LEFT JOIN read_parquet({files:marker_rates.HITS}) h
       USING (study, profile, cell, persona, question_idx, sample_idx);
