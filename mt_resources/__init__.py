"""Dagster resources: the artefact store, GPU leases, where heavy steps run, the judge, W&B."""
from mt_resources.compute import Compute
from mt_resources.gpu import GpuAllocator
from mt_resources.judge import JudgeResource
from mt_resources.store import Artifact, ArtifactError, ArtifactStore
from mt_resources.wandb import WandbResource

__all__ = ["Artifact", "ArtifactError", "ArtifactStore", "Compute", "GpuAllocator", "JudgeResource", "WandbResource"]
