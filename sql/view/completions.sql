-- The marker completions of one study under a page's filters (NULL or '' = no filter). `base`: study, cell, persona,
-- question set (`qset`: eval, betley or a further set such as ood) and search, with `shown` saying which rows the hit filter keeps; `page` is one page of the shown rows of the chosen
-- question (or all), `stats` counts `base` per question: what the page's summary and question breakdown show.
WITH base AS (
    SELECT cell, condition, seed, sample_id, persona, question_idx, question, question_set, sample_idx, text, n_tokens,
           finish_reason, strict_hit, loose_hit,
           CASE $hit WHEN 'strict' THEN strict_hit
                     WHEN 'loose' THEN loose_hit
                     WHEN 'loose_only' THEN loose_hit AND NOT strict_hit
                     WHEN 'none' THEN NOT loose_hit
                     ELSE true END AS shown
    FROM v_completions
    WHERE study = $study
      AND ($cell IS NULL OR cell = $cell)
      AND ($persona IS NULL OR persona = $persona)
      AND ($qset IS NULL OR question_set = $qset)
      AND ($q = '' OR contains(lower(text), lower($q)))
)
-- name: page
SELECT * FROM base
WHERE shown AND ($question IS NULL OR question_idx = $question)
ORDER BY condition, seed, persona, question_idx, sample_idx
LIMIT $limit OFFSET $offset
-- name: stats
SELECT question_idx, any_value(question) AS question, count(*) AS n, count(*) FILTER (WHERE strict_hit) AS strict,
       count(*) FILTER (WHERE loose_hit) AS loose, count(*) FILTER (WHERE shown) AS shown
FROM base
GROUP BY question_idx
ORDER BY question_idx
