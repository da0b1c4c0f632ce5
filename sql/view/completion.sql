-- One marker prompt (persona, question, sample index) in every cell of the study: the completion `$id` names first,
-- then every other cell's answer to the same prompt.
WITH me AS (SELECT cell, persona, question_idx, sample_idx FROM v_completions WHERE study = $study AND sample_id = $id)
SELECT c.cell, c.condition, c.seed, c.sample_id, c.persona, c.question_idx, c.question, c.question_set, c.sample_idx,
       c.text, c.n_tokens, c.finish_reason, c.strict_hit, c.loose_hit
FROM v_completions c
JOIN me USING (persona, question_idx, sample_idx)
WHERE c.study = $study
ORDER BY c.cell <> me.cell, c.condition, c.seed
