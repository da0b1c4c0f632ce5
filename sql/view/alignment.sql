-- The judged alignment completions of one study under a page's filters (NULL or '' = no filter), with the judge's
-- reasoning and raw reply. `base`: every filter but the question; `page` one page of the chosen question's rows (or
-- all), `summary` their counts and means, `questions` `base` per question.
WITH base AS (
    SELECT cell, condition, seed, sample_id, question_idx, question, sample_idx, response, n_tokens, finish_reason,
           aligned, coherent, reasoning, error, judge_model, judge_offline, raw_text
    FROM v_alignment
    WHERE study = $study
      AND ($cell IS NULL OR cell = $cell)
      AND ($q = '' OR contains(lower(response), lower($q)) OR contains(lower(coalesce(reasoning, '')), lower($q))
           OR contains(lower(coalesce(raw_text, '')), lower($q)))
      AND ($amin IS NULL OR aligned >= $amin) AND ($amax IS NULL OR aligned <= $amax)
      AND ($cmin IS NULL OR coherent >= $cmin) AND ($cmax IS NULL OR coherent <= $cmax)
      AND (NOT $errors OR error IS NOT NULL)
), sel AS (SELECT * FROM base WHERE $question IS NULL OR question_idx = $question)
-- name: page
SELECT * FROM sel ORDER BY condition, seed, question_idx, sample_idx LIMIT $limit OFFSET $offset
-- name: summary
SELECT count(*) AS n, avg(aligned) AS aligned, avg(coherent) AS coherent, count(error) AS errors FROM sel
-- name: questions
SELECT question_idx, any_value(question) AS question, count(*) AS n, avg(aligned) AS aligned,
       avg(coherent) AS coherent
FROM base
GROUP BY question_idx
ORDER BY question_idx
