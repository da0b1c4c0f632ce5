-- One row per marker-eval completion, with its strict/loose marker hits and the cell's condition and seed.
CREATE OR REPLACE VIEW completions AS
WITH m AS (
    SELECT *, regexp_extract(filename, '/marker_completions/([^/]+)/', 1) AS cell
    FROM read_parquet('{root}/marker_completions/*/completions.parquet', filename = true)
), h AS (
    SELECT *, regexp_extract(filename, '/marker_rates/([^/]+)/', 1) AS cell
    FROM read_parquet('{root}/marker_rates/*/hits.parquet', filename = true)
)
SELECT c.study, c.profile, m.cell, c.condition, c.seed, m.persona, m.question_idx, m.question, m.question_set,
       m.sample_idx, m.text, m.n_tokens, m.finish_reason, h.strict_hit, h.loose_hit
FROM m
JOIN cells c USING (cell)
LEFT JOIN h ON h.cell = m.cell AND h.persona = m.persona AND h.question_idx = m.question_idx
           AND h.sample_idx = m.sample_idx;
