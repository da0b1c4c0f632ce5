-- with: probe_scores
-- The latent probe of a study that has one (its `probe:` block; not pre-registered). probe_scores: the reference
-- probe's mean P(source voice) over each persona's prompts, per cell and layer; probe_cells: per cell and layer, the
-- reference probe's scores of the assistant and the source persona, the held-out AUC of a probe refitted on the cell
-- and the cosine of its direction to the reference's; probe_states: the hidden states the probes read, one LIST of
-- floats per (cell, persona, question, layer), for fitting other probes.
CREATE OR REPLACE VIEW probe_scores AS
SELECT study, profile, cell, condition, seed, persona, layer, score
FROM read_parquet({files:probe_scores.ROWS});

CREATE OR REPLACE VIEW probe_cells AS
SELECT study, profile, cell, condition, seed, layer, heldout_auc, cosine_to_reference, assistant_score, source_score
FROM read_parquet({files:probe_scores.CELLS});

CREATE OR REPLACE VIEW probe_states AS
SELECT s.study, s.profile, s.cell, c.condition, c.seed, s.persona, s.question_idx, s.question_set, s.layer, s.state
FROM read_parquet({files:probe_states.ROWS}) s
JOIN cells c USING (study, profile, cell);
