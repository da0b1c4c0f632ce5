-- Judge scores: one row per alignment completion; judge_model / judge_offline say who judged it.
CREATE OR REPLACE VIEW judge_scores AS
SELECT j.study, j.profile, j.cell, c.condition, c.seed, j.sample_id, j.question_idx, j.sample_idx, j.question, j.response,
       j.aligned, j.coherent, j.reasoning, j.error, j.judge_model, j.judge_offline, j.prompt_sha256, j.cached
FROM read_parquet({files:alignment_scores.ROWS}) j
JOIN cells c USING (study, profile, cell);
