#!/usr/bin/env python3
"""Makes tests/fixtures/peft-adapter: a LoRA adapter saved by the real PEFT library in its standard
layout (adapter_model.safetensors + adapter_config.json) for the tiny Mistral of
tests/fixtures/clara-reference, and the logits PEFT computes with it, so the C++ LoRA code is
checked against PEFT itself: loading the layout, the forward with the adapter, and merging.

The adapter targets three of the seven projections (q_proj, v_proj, down_proj) with r 4,
lora_alpha 16 (scaling 4), and is initialised with init_lora_weights=False (A and B both random,
so every term is non-zero); dropout 0.

Needs torch, transformers and peft (fixture scripts only):
  /opt/hrmclara/venv/bin/pip install transformers==4.56.2 peft==0.17.1
  /opt/hrmclara/venv/bin/python tests/scripts/make_peft_fixture.py

Writes: adapter_model.safetensors, adapter_config.json (as PEFT saved them) and expected.safetensors
with input_ids [2, 9], attention_mask, logits.base, logits.adapter (float32, [2, 9, 647]) and
logits.merged (the same model after merge_and_unload()).
"""
import json
import os

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
BASE = os.path.join(HERE, "..", "fixtures", "clara-reference")
OUT = os.path.join(HERE, "..", "fixtures", "peft-adapter")


def main():
    torch.manual_seed(20261129)
    model = AutoModelForCausalLM.from_pretrained(BASE, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    ids = torch.tensor([[1, 300, 301, 302, 303, 304, 305, 306, 307], [1, 1, 1, 400, 401, 402, 403, 404, 405]])
    mask = torch.tensor([[1] * 9, [0, 0, 1, 1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        base_logits = model(input_ids=ids, attention_mask=mask).logits.float()
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0,
                        init_lora_weights=False, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    peft_model.eval()
    with torch.no_grad():
        adapter_logits = peft_model(input_ids=ids, attention_mask=mask).logits.float()
    os.makedirs(OUT, exist_ok=True)
    peft_model.save_pretrained(OUT)
    # The base path is this machine's; keep the file free of it.
    cfg_path = os.path.join(OUT, "adapter_config.json")
    cfg = json.load(open(cfg_path))
    cfg["base_model_name_or_path"] = "clara-reference"
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        merged_logits = merged(input_ids=ids, attention_mask=mask).logits.float()
    save_file({"input_ids": ids, "attention_mask": mask, "logits.base": base_logits.contiguous(),
               "logits.adapter": adapter_logits.contiguous(), "logits.merged": merged_logits.contiguous()},
              os.path.join(OUT, "expected.safetensors"))
    print("wrote", os.path.normpath(OUT), "| adapter vs base max diff", (adapter_logits - base_logits).abs().max().item())


if __name__ == "__main__":
    main()
