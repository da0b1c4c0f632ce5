"""Dagster resources: the artefact store, GPU leases, where heavy tasks run, the judge."""
from mt_resources.compute import Compute
from mt_resources.gpu import GpuAllocator
from mt_resources.judge import JudgeResource
from mt_resources.store import Artifact, ArtifactError, ArtifactStore

__all__ = ["Artifact", "ArtifactError", "ArtifactStore", "Compute", "GpuAllocator", "JudgeResource"]
