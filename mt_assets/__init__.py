"""Thin Dagster assets over ``mt_core``: inputs, coupling (per source), cells (per cell), analysis."""
from mt_assets import analysis, cells, coupling, inputs

ALL_ASSETS = [*inputs.assets, *coupling.assets, *cells.assets, *analysis.assets]
