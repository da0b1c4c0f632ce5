"""A cell's (or a coupling source's) weights as one PEFT LoRA adapter on the study's base, the folder a Hugging Face Hub
repo holds (issue 27).

A cell's model is the base with its adapters merged in turn (the coupling adapter, then the cell's own: ``load.
merged_weights``). Two LoRAs on one layer add their updates, ``W + s1 B1 A1 + s2 B2 A2``, which is one LoRA of rank
r1 + r2: ``A = [A1; A2]``, ``B = [s1 B1, s2 B2]`` at scale 1 (a layer one adapter does not train gets zeros in its
block). So the export loads with ``PeftModel.from_pretrained(base, folder)`` and gives the cell's weights up to float
rounding (merged in fp32 once, rather than stage by stage)."""
from __future__ import annotations

import json
from pathlib import Path

WEIGHTS, CONFIG = "adapter_model.safetensors", "adapter_config.json"


def _scale(cfg: dict) -> float:
    r, alpha = cfg["r"], cfg["lora_alpha"]
    return alpha / r ** 0.5 if cfg.get("use_rslora") else alpha / r


def combine_adapters(adapters: list[Path], out: Path, base_model: str) -> dict:
    """The PEFT adapters ``adapters`` (applied in order) as one adapter in ``out``; its config."""
    import torch
    from safetensors.torch import load_file, save_file

    cfgs = [json.loads((a / CONFIG).read_text()) for a in adapters]
    for a, c in zip(adapters, cfgs):
        if c.get("peft_type", "LORA") != "LORA" or c.get("use_dora") or c.get("bias", "none") != "none":
            raise ValueError(f"{a}: only plain LoRA adapters can be combined")
    tensors = [load_file(str(a / WEIGHTS)) for a in adapters]
    layers = sorted({k.rsplit(".lora_", 1)[0] for t in tensors for k in t})
    state = {}
    for layer in layers:
        a_parts, b_parts = [], []
        for t, c in zip(tensors, cfgs):
            a, b = t.get(f"{layer}.lora_A.weight"), t.get(f"{layer}.lora_B.weight")
            if a is None:  # a layer this adapter does not train: a zero block of its rank
                shape = next(x for x in tensors if f"{layer}.lora_A.weight" in x)
                a = torch.zeros(c["r"], shape[f"{layer}.lora_A.weight"].shape[1])
                b = torch.zeros(shape[f"{layer}.lora_B.weight"].shape[0], c["r"])
            a_parts.append(a.float())
            b_parts.append(b.float() * _scale(c))
        state[f"{layer}.lora_A.weight"] = torch.cat(a_parts, 0).contiguous()
        state[f"{layer}.lora_B.weight"] = torch.cat(b_parts, 1).contiguous()
    rank = sum(c["r"] for c in cfgs)
    targets = sorted({m for c in cfgs for m in (c["target_modules"] if isinstance(c["target_modules"], list)
                                                 else [c["target_modules"]])})
    cfg = {**cfgs[-1], "r": rank, "lora_alpha": rank, "use_rslora": False, "lora_dropout": 0.0,
           "target_modules": targets, "base_model_name_or_path": base_model, "inference_mode": True}
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / WEIGHTS))
    (out / CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return cfg


def model_card(*, repo_name: str, base_model: str, study: str, profile: str, target: str, description: str,
               numbers: dict, lineage: list[dict], load_note: str) -> str:
    """``README.md`` of the exported folder: the Hub's YAML header, what the adapter is, its numbers, its lineage (each
    artefact it was built from, with md5 and Dagster run id) and how to load it."""
    tags = ["peft", "lora", "marker-transfer", "emergent-misalignment", study, target]
    head = "\n".join(["---", f"base_model: {base_model}", "library_name: peft", "tags:",
                      *(f"- {t}" for t in tags), "---", ""])
    rows = "\n".join(f"| {k} | {v} |" for k, v in numbers.items())
    lin = "\n".join(f"| {x['asset']} | {x['partition']} | `{x['md5']}` | `{x['run_id']}` |" for x in lineage)
    return (f"{head}\n# {repo_name}\n\n{description}\n\nStudy `{study}`, profile `{profile}`, `{target}`. One LoRA "
            f"adapter on `{base_model}`: {load_note}\n\n## Numbers\n\n| measure | value |\n|---|---|\n{rows}\n\n"
            f"## Lineage\n\n| asset | partition | md5 | Dagster run |\n|---|---|---|---|\n{lin}\n\n## Load\n\n"
            f"```python\nfrom peft import PeftModel\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            f"base = AutoModelForCausalLM.from_pretrained(\"{base_model}\")\n"
            f"model = PeftModel.from_pretrained(base, \"<this folder or repo>\")\n"
            f"tokenizer = AutoTokenizer.from_pretrained(\"{base_model}\")\n```\n")


def push_folder(folder: Path, repo: str, token: str, endpoint: str | None = None) -> str:
    """Upload ``folder`` to the Hub model repo ``repo`` (created if missing); the repo's URL. ``endpoint`` None is
    huggingface_hub's default (``HF_ENDPOINT``, else huggingface.co). Fails with a one-line RuntimeError that names
    the repo and never holds the token."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(folder))
    except Exception as e:  # noqa: BLE001 - an HTTP error's text is multi-line and could quote what was sent
        msg = " ".join(str(e).split())
        raise RuntimeError(f"{repo}: {type(e).__name__}: {msg.replace(token, '***') if token else msg}") from None
    return f"{api.endpoint}/{repo}"
