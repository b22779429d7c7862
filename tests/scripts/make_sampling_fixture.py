#!/usr/bin/env python3
"""Makes tests/fixtures/sampling/warpers.safetensors: the distributions transformers' sampling
draws from, for fixed logits under several (temperature, top_k, top_p) settings, computed with
transformers' own logits warpers (TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, in
the order generate() applies them) and a softmax.

Needs torch, safetensors and transformers (fixture scripts only; pip install transformers==4.56.2
into the set-up's venv), then:  /opt/hrmclara/venv/bin/python tests/scripts/make_sampling_fixture.py

Tensors: `logits` [R, V] float32; per case i, `case{i}.probs` [R, V] float32 and `case{i}.settings`
float64 [temperature, top_k, top_p].
"""
import os

import torch
import transformers
from safetensors.torch import save_file
from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)

CASES = [  # temperature, top_k (0: off), top_p (1: off)
    (1.0, 0, 1.0),
    (0.6, 0, 1.0),
    (1.8, 0, 1.0),
    (1.0, 3, 1.0),
    (1.0, 0, 0.7),
    (0.5, 0, 0.9),   # temperature first changes which tokens top-p keeps
    (2.5, 0, 0.6),
    (1.0, 4, 0.8),   # top-k first changes the mass top-p sees
    (0.7, 6, 0.5),
    (1.3, 2, 0.99),
]


def warped(logits, temperature, top_k, top_p):
    processors = LogitsProcessorList()
    if temperature != 1.0:
        processors.append(TemperatureLogitsWarper(temperature))
    if top_k > 0:
        processors.append(TopKLogitsWarper(top_k=top_k))
    if top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p=top_p))
    scores = processors(torch.zeros(logits.shape[0], 1, dtype=torch.long), logits.clone())
    return scores.softmax(-1)


def main():
    g = torch.Generator().manual_seed(20261129)
    rows, vocab = 8, 12
    # Spread-out logits with a few near-ties, so that the filters' edges matter.
    logits = torch.randn(rows, vocab, generator=g) * 2.0
    logits[1, 3] = logits[1, 5]
    out = {"logits": logits.contiguous()}
    for i, (t, k, p) in enumerate(CASES):
        out[f"case{i}.probs"] = warped(logits, t, k, p).float().contiguous()
        out[f"case{i}.settings"] = torch.tensor([t, float(k), p], dtype=torch.float64)
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "..", "fixtures", "sampling", "warpers.safetensors")
    save_file(out, path, metadata={"transformers": transformers.__version__, "torch": torch.__version__})
    print("wrote", os.path.normpath(path), len(CASES), "cases")


if __name__ == "__main__":
    main()
