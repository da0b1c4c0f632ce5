"""The protocol's steps as plain functions, one module per stage, mirroring ``mt_assets/`` one to one.

A step is ``fn(study, **inputs, out, log) -> metadata``: it reads its input artefacts' directories, writes its files
into ``out`` (a fresh staging directory) through ``mt_core.layout``, and returns the numbers Dagster records. The
Dagster layer decides where ``out`` lives, runs the step (in its process or a worker's) and publishes ``out``.
"""
from mt_core.steps import analysis, cells, coupling, inputs  # noqa: F401 - each registers its steps

__all__ = ["analysis", "cells", "coupling", "inputs"]
