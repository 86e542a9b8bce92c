"""Generate a tiny LoRA adapter (PEFT format) for the tiny Gemma 3 text model of make_tiny_gemma.py.

    <vllm venv>/bin/python tests/serving/make_tiny_lora.py OUT_DIR [RANK]

Runs in the vLLM venv (torch and safetensors come with vLLM; PEFT is not needed: the format is two files).
Deterministic. What PEFT's save_pretrained writes for a LoRA on q_proj and v_proj of both layers:
adapter_config.json (peft_type LORA, r, lora_alpha, target_modules) and adapter_model.safetensors with
base_model.model.model.layers.<i>.self_attn.<proj>.lora_{A,B}.weight. Unlike PEFT's initialisation (B = 0,
an adapter that changes nothing) B is random too, so the adapter really changes the model's output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# The tiny model's shape (make_tiny_gemma.py): hidden 64, 2 heads and 1 KV head of head_dim 32, 2 layers.
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, LAYERS = 64, 2, 1, 32, 2
TARGETS = {"q_proj": HEADS * HEAD_DIM, "v_proj": KV_HEADS * HEAD_DIM}
DEFAULT_RANK = 8


def adapter_config(rank: int) -> dict[str, object]:
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "tiny-gemma3",
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "target_modules": sorted(TARGETS),
        "bias": "none",
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "use_rslora": False,
        "use_dora": False,
        "inference_mode": True,
    }


def make_adapter(out: Path, rank: int = DEFAULT_RANK) -> None:
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(1)
    tensors = {}
    for layer in range(LAYERS):
        for proj, out_features in sorted(TARGETS.items()):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{prefix}.lora_A.weight"] = (torch.randn(rank, HIDDEN) * 0.5).to(torch.bfloat16)
            tensors[f"{prefix}.lora_B.weight"] = (torch.randn(out_features, rank) * 0.5).to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps(adapter_config(rank), indent=2, sort_keys=True) + "\n")


def main() -> int:
    if len(sys.argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    rank = int(sys.argv[2]) if len(sys.argv) == 3 else DEFAULT_RANK
    make_adapter(out, rank)
    print(json.dumps({"adapter_dir": str(out), "rank": rank}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
