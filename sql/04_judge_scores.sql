-- Judge scores: one row per alignment completion; judge_model / judge_offline say who judged it.
CREATE OR REPLACE VIEW judge_scores AS
SELECT c.study, c.profile, j.cell, c.condition, c.seed, j.question_idx, j.sample_idx, j.question, j.response,
       j.aligned, j.coherent, j.reasoning, j.error, j.judge_model, j.judge_offline, j.prompt_sha256, j.cached
FROM (SELECT *, regexp_extract(filename, '/alignment_scores/([^/]+)/', 1) AS cell
      FROM read_parquet('{root}/alignment_scores/*/scores.parquet', filename = true)) j
JOIN cells c USING (cell);
