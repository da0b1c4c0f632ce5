"""Unpartitioned inputs: reference data, the base model, the two second-stage datasets."""

import dagster as dg

from mt_assets.common import publish, retry_policy
from mt_assets.study import StudyDefs
from mt_core.steps import inputs as steps
from mt_resources import ArtifactStore, Compute, GpuAllocator, WandbResource

GROUP = "inputs"
DESCRIPTION = "Reference data, base model and second-stage datasets."


def build(sd: StudyDefs) -> list:
    """The study's input assets."""
    study, cv = sd.study, sd.code_version
    common = dict(group_name=GROUP, key_prefix=sd.prefix)
    files = dict(retry_policy=retry_policy(sd))  # reading input files can fail transiently

    @dg.asset(**common, **files, code_version=cv("eval_set", "eval_set_md5"),
              description="The 11 personas and 28 questions of the marker eval (md5-checked copy).")
    def eval_set(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        return publish(sd, context, store, steps.copy_reference, [], which="eval_set")

    @dg.asset(**common, **files, code_version=cv("arc.path", "arc.md5"),
              description="ARC-Challenge test questions (1172 rows, md5-checked copy).")
    def arc_challenge(context: dg.AssetExecutionContext, store: ArtifactStore) -> dg.MaterializeResult:
        return publish(sd, context, store, steps.copy_reference, [], which="arc")

    @dg.asset(**common, pool="gpu",
              code_version=cv("model", "arc.path", "eval_set", "marker", files=(study.coupling_questions,)),
              description="The base model: the tiny locally built Qwen2 (tiny profile) or a pinned local HF snapshot.")
    def base_model(context: dg.AssetExecutionContext, store: ArtifactStore, gpu: GpuAllocator,
                   compute: Compute, wandb: WandbResource) -> dg.MaterializeResult:
        with gpu.lease(context.log.info):
            return publish(sd, context, store, steps.build_base_model, [], compute=compute, share_to=wandb)

    def dataset_asset(which: str, description: str):
        @dg.asset(name=f"{which}_dataset", **common, **files, description=description,
                  code_version=cv(f"data.{which}", "marker"),
                  check_specs=[dg.AssetCheckSpec("md5_matches", asset=sd.key(f"{which}_dataset"), blocking=True,
                                                 description="The file's md5 equals the pinned md5 of the study "
                                                             "config.")])
        def _asset(context: dg.AssetExecutionContext, store: ArtifactStore,
                   wandb: WandbResource) -> dg.MaterializeResult:
            def checks(meta):
                return [dg.AssetCheckResult(check_name="md5_matches", passed=bool(meta["md5_ok"]),
                                            severity=dg.AssetCheckSeverity.ERROR,
                                            metadata={"expected_md5": str(meta["expected_md5"]),
                                                      "actual_md5": meta["md5"]},
                                            description=None if meta["md5_ok"] else
                                            f"md5 mismatch: expected {meta['expected_md5']}, got {meta['md5']}")]
            return publish(sd, context, store, steps.build_dataset, [], which=which, checks=checks,
                           share_to=wandb)
        return _asset

    em_dataset = dataset_asset("em", "The EM ('bad advice') second-stage dataset, md5-pinned.")
    benign_dataset = dataset_asset("benign", "The benign SFT second-stage dataset, md5-pinned.")
    return [eval_set, arc_challenge, base_model, em_dataset, benign_dataset]
