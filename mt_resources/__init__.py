"""Dagster resources: the artefact store, GPU leases, the judge."""
from mt_resources.gpu import GpuAllocator
from mt_resources.judge import JudgeResource
from mt_resources.store import Artifact, ArtifactError, ArtifactStore

__all__ = ["Artifact", "ArtifactError", "ArtifactStore", "GpuAllocator", "JudgeResource"]
