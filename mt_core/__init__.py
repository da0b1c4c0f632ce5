"""Core (Dagster-free) library code for the marker-transfer platform."""
