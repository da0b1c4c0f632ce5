-- Completions to the Betley questions that the judge scored.
CREATE OR REPLACE VIEW alignment_completions AS
SELECT a.study, a.profile, a.cell, c.condition, c.seed, a.sample_id, a.question_idx, a.question, a.sample_idx, a.text,
       a.n_tokens, a.finish_reason
FROM read_parquet({files:alignment_completions.COMPLETIONS}) a
JOIN cells c USING (study, profile, cell);
