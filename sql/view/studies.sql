-- The studies in the open catalogs, for the study picker: cells, and how many of them are complete.
SELECT study, any_value(profile) AS profile, count(*) AS n_cells, count(*) FILTER (WHERE complete) AS n_complete
FROM v_cells
GROUP BY study
ORDER BY study
