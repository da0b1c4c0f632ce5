-- with: coupling_sweep
-- The coupling sweep of a study that has one (its `coupling_sweep:` block): one row per swept coupling partition,
-- the swept source's own adapter (variant 'default') and each variant; after study, profile, source, variant and
-- partition come the recipe fields the variants set (lr, epochs, lora_r, ...: they differ between studies), then the
-- rule gate's rates on the merged coupling model, ARC-Challenge accuracy, whether it passes its gates and the sweep
-- rule, whether a condition builds on it (chosen) and whether it is the best that passes.
CREATE OR REPLACE VIEW coupling_sweep AS
SELECT * FROM read_parquet({files:coupling_sweep.ROWS});
