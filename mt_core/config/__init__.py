"""Study configuration: the model of a study (``schema``) and reading it from its YAML file (``load``).

    from mt_core.config import Study, load_study, ConfigError, DEFAULT_STUDY

``load_study(path, profile)`` reads one study file with one profile merged on top and validates it; an error names the
file, the line and the dotted field. It reads no environment variable: which study and profile are meant is the
caller's to say (``mt_settings``).
"""
from mt_core.config.load import Override, deep_merge, load_study, named_personas, read_study_file, where
from mt_core.config.schema import (DEFAULT_PROFILE, DEFAULT_STUDY, IN_DISTRIBUTION, PROJECT_ROOT, Arc, Backend, Cell,
                                   Condition, ConfigError, ConfigModel, CouplingData, Data, DataSpec, Gate, Gates,
                                   HFModel, Judge, Md5, Probe, QuestionSet, RandomModel, Recipe, Sampler, Samplers,
                                   Seed, Source, Speed, Study, Thresholds, TinyModel, cell_key, parse_cell_key)

__all__ = ["DEFAULT_PROFILE", "DEFAULT_STUDY", "IN_DISTRIBUTION", "PROJECT_ROOT", "Arc", "Backend", "Cell", "Condition",
           "ConfigError", "ConfigModel", "CouplingData", "Data", "DataSpec", "Gate", "Gates", "HFModel", "Judge", "Md5",
           "Override", "Probe", "QuestionSet", "RandomModel", "Recipe", "Sampler", "Samplers", "Seed", "Source", "Speed", "Study", "Thresholds",
           "TinyModel", "cell_key", "deep_merge", "load_study", "named_personas", "parse_cell_key", "read_study_file",
           "where"]
