"""`mt export`: a cell's or a coupling source's adapter as the folder a Hugging Face Hub repo holds, with its model
card (issue 27)."""
from __future__ import annotations

from pathlib import Path

from mt_cli.session import current_study, instance, settings_of


def cmd_export(args) -> int:
    from mt_assets.common import read_recorded
    from mt_core.config import ConfigError
    from mt_core.layout import Adapter, AlignmentScores, ArcScores, BaseModel, MarkerRates, artefact_root
    from mt_core.model.export import combine_adapters, model_card, push_folder
    from mt_resources.artifact import ArtifactError
    from mt_resources.store import ArtifactStore
    from mt_settings import secret

    s = settings_of(args)
    try:
        study = current_study(s)
        source = args.target if args.target in study.coupling_keys else None
        cell = None if source else study.cell(args.target)
    except ConfigError as e:
        raise SystemExit(f"mt export: {e}") from None
    store = ArtifactStore(root=str(artefact_root(study, s.artifacts)))
    with instance(s) as inst:
        def recorded(asset: str, partition: str | None):
            return read_recorded(study.name, inst, store, asset, partition)

        try:
            base, base_meta = recorded("base_model", None)
            stack = [("coupling_adapter", source or cell.coupling),
                     ("cell_adapter", cell.key if cell else None)]
            arts = [(a, p, *recorded(a, p)) for a, p in stack if p]
            evals = {a: recorded(a, cell.key) for a in (MarkerRates.asset, ArcScores.asset, AlignmentScores.asset)
                     } if cell else {}
        except ArtifactError as e:
            raise SystemExit(f"mt export: {e}") from None
    adapters = [Adapter.path(art.path) for _, _, art, _ in arts if Adapter.path(art.path) is not None]
    if not adapters:
        raise SystemExit(f"mt export: {args.target} has no adapter (the raw base, no second stage)")
    base_dir = BaseModel.model_dir(base.path)
    base_id = study.model.id if study.model.kind == "hf" else str(base_dir)
    out = Path(args.to)
    cfg = combine_adapters(adapters, out, base_id)

    target = f"source {source}" if source else f"cell {cell.key}"
    if cell:
        rates = MarkerRates.read_eval(evals[MarkerRates.asset][0].path)["per_persona"]
        numbers = {f"{study.marker} rate, {p}": f"{100 * v['strict_hits'] / v['total']:.1f} % "
                                                 f"({v['strict_hits']}/{v['total']})"
                   for p, v in rates.items() if p in (study.assistant_persona, study.adapter_persona(cell.key))}
        arc = ArcScores.read_summary(evals[ArcScores.asset][0].path)
        al = AlignmentScores.read_summary(evals[AlignmentScores.asset][0].path)
        numbers |= {"ARC-Challenge accuracy": f"{arc.arc_challenge_logprob:.3f}",
                    "aligned (judge mean)": f"{al.overall_mean_aligned:.1f}" + (" (offline stand-in judge)"
                                                                                  if al.judge_offline else "")}
        what = study.conditions[cell.condition].description or cell.condition
    else:
        gates = Adapter.read_gates(arts[0][2].path)
        numbers = {f"gate {n}": "pass" if g["pass"] else "FAIL" for n, g in gates.items()}
        persona = study.sources[study.coupling_target(source)[0]].persona
        what = f"the {source} coupling adapter ({persona} + {study.marker})"
    lineage = [{"asset": "base_model", "partition": "_", "md5": base.digest, "run_id": base_meta["run_id"]}]
    lineage += [{"asset": a, "partition": p, "md5": art.digest, "run_id": meta["run_id"]} for a, p, art, meta in arts]
    lineage += [{"asset": a, "partition": cell.key, "md5": art.digest, "run_id": meta["run_id"]}
                for a, (art, meta) in evals.items()]
    note = ("the coupling adapter and the cell's own, combined into one of rank "
            f"{cfg['r']} (mt_core/model/export.py)" if len(adapters) > 1 else f"rank {cfg['r']}")
    (out / "README.md").write_text(model_card(
        repo_name=f"{study.name}-{args.target}", base_model=base_id, study=study.name, profile=study.profile,
        target=target, description=str(what), numbers=numbers, lineage=lineage, load_note=note))
    print(f"exported {target} of study {study.name} to {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    if args.push:
        token = secret("HF_TOKEN")
        if not token:
            raise SystemExit("mt export --push: set HF_TOKEN (a Hugging Face write token) to upload")
        try:
            url = push_folder(out, args.push, token)
        except RuntimeError as e:
            raise SystemExit(f"mt export --push {e}") from None
        print(f"pushed to {url}")
    return 0
