-- ARC-Challenge: one row per cell and question (log-prob scoring, PROTOCOL.md §2.9).
CREATE OR REPLACE VIEW arc_scores AS
SELECT a.study, a.profile, a.cell, c.condition, c.seed, a.idx, a.question, a.correct_answer, a.predicted,
       a.correct, a.label_logprobs
FROM read_parquet({files:arc_scores.ROWS}) a
JOIN cells c USING (study, profile, cell);
