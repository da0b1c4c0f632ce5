-- Two cells' marker completions on the same prompts: one row per (persona, question, sample index) that either cell
-- answered, A's completion beside B's. `hit` shows rows by the strict marker: in A, in B, or where A and B differ.
WITH a AS (
    SELECT persona, question_idx, sample_idx, question, sample_id, text, strict_hit, loose_hit
    FROM v_completions
    WHERE study = $study AND cell = $a AND ($persona IS NULL OR persona = $persona)
), b AS (
    SELECT persona, question_idx, sample_idx, question, sample_id, text, strict_hit, loose_hit
    FROM v_completions
    WHERE study = $study AND cell = $b AND ($persona IS NULL OR persona = $persona)
), sel AS (
    SELECT persona, question_idx, sample_idx, coalesce(a.question, b.question) AS question,
           a.sample_id AS a_id, a.text AS a_text, a.strict_hit AS a_strict, a.loose_hit AS a_loose,
           b.sample_id AS b_id, b.text AS b_text, b.strict_hit AS b_strict, b.loose_hit AS b_loose,
           CASE $hit WHEN 'a' THEN coalesce(a.strict_hit, false)
                     WHEN 'b' THEN coalesce(b.strict_hit, false)
                     WHEN 'diff' THEN a.strict_hit IS DISTINCT FROM b.strict_hit
                     ELSE true END AS shown
    FROM a FULL JOIN b USING (persona, question_idx, sample_idx)
    WHERE ($question IS NULL OR question_idx = $question)
      AND ($q = '' OR contains(lower(coalesce(a.text, '')), lower($q))
           OR contains(lower(coalesce(b.text, '')), lower($q)))
)
-- name: page
SELECT * FROM sel WHERE shown ORDER BY persona, question_idx, sample_idx LIMIT $limit OFFSET $offset
-- name: summary
SELECT count(a_id) AS a_n, count(*) FILTER (WHERE a_strict) AS a_strict, count(b_id) AS b_n,
       count(*) FILTER (WHERE b_strict) AS b_strict, count(*) FILTER (WHERE shown) AS shown
FROM sel
