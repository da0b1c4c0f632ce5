-- The completion-length audit of the marker eval, per cell and persona (persona NULL: the cell's completions pooled):
-- tokens per completion (mean, p50, p90), the share cut at max_tokens (finish_reason 'length': a cut completion cannot
-- carry a marker trained at its end), and the strict marker rate among the completions that finished.
CREATE OR REPLACE VIEW completion_length AS
SELECT l.study, l.profile, l.cell, c.condition, c.seed, l.persona, l.n, l.mean_tokens, l.p50, l.p90, l.max_tokens,
       l.n_truncated, l.truncated_share, l.n_finished, l.finished_strict_hits, l.finished_strict_rate
FROM read_parquet({files:completion_length.ROWS}) l
JOIN cells c USING (study, profile, cell);
