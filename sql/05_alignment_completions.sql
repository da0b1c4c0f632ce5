-- Completions to the Betley questions that the judge scored.
CREATE OR REPLACE VIEW alignment_completions AS
SELECT c.study, c.profile, a.cell, c.condition, c.seed, a.question_idx, a.question, a.sample_idx, a.text,
       a.n_tokens, a.finish_reason
FROM (SELECT *, regexp_extract(filename, '/alignment_completions/([^/]+)/', 1) AS cell
      FROM read_parquet('{root}/alignment_completions/*/completions.parquet', filename = true)) a
JOIN cells c USING (cell);
