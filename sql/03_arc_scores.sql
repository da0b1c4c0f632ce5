-- ARC-Challenge: one row per cell and question (log-prob scoring, PROTOCOL.md §2.9).
CREATE OR REPLACE VIEW arc_scores AS
SELECT c.study, c.profile, a.cell, c.condition, c.seed, a.idx, a.question, a.correct_answer, a.predicted,
       a.correct, a.label_logprobs
FROM (SELECT *, regexp_extract(filename, '/arc_scores/([^/]+)/', 1) AS cell
      FROM read_parquet('{root}/arc_scores/*/arc.parquet', filename = true)) a
JOIN cells c USING (cell);
