#!/usr/bin/env python3
"""Times upstream's Python train step on the CPU, with the same torch, to set beside our C++
`hrm_bench --mode train` (src/tools/hrm_bench.cpp). One step is the same work as one of ours: one ACT
step forward through ACTLossHead, backward of loss / batch_size, the sparse puzzle embedding's SignSGD
(lr 1e-2, wd 0.1) step + zero_grad, AdamATan2 (lr 1e-4, betas 0.9/0.95, wd 0.1) step + zero_grad, the
carry kept. Data: random ints as hrm_bench makes them (inputs and labels in [1, vocab), puzzle ids in
[0, num_puzzle_identifiers)), torch.manual_seed(0) before the model is made. Eager mode: upstream
wraps the model in torch.compile, which is not timed here (neither side compiles).

  --arch hrm: sapientinc/HRM models/hrm/hrm_act_v1.py. Its layers.py imports flash_attn_func, which
              is CUDA-only: a shim computes exact softmax attention in float32 (scores, softmax, @V;
              the order of our --attention exact), NOT torch's scaled_dot_product_attention.
  --arch trm: SamsungSAILMontreal/TinyRecursiveModels models/recursive_reasoning/trm.py. Its layers.py
              calls torch's scaled_dot_product_attention itself; that is what runs.

The upstream code is imported from the checkouts given (never copied); it needs pydantic (both) and
einops (TRM):  /opt/hrmclara/venv/bin/pip install pydantic einops
The config is our bench config (models/hrm/bench-2core.json): upstream arch fields plus batch_size,
seq_len, vocab_size, num_puzzle_identifiers; fields the arch does not know are ignored as upstream's
pydantic config ignores them (so a TRM run of an HRM config gets TRM's defaults, e.g. puzzle_emb_len 16).

Prints one JSON line: {"impl": "upstream-python", "arch", "torch", "cpu", "threads",
"ms_per_step_median", "ms_per_step_min", "ms_per_step_mean", "steps", ...}.
Example: scripts/bench_hrm_upstream.py --upstream-hrm /tmp/hrm-src --config models/hrm/bench-2core.json --steps 10 --threads 2
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time
import types

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "scripts"))
from upstream_shims import AdamATan2, flash_attn_func  # noqa: E402

ARCHS = {
    "hrm": ("hrm.hrm_act_v1@HierarchicalReasoningModel_ACTV1", "models/hrm/hrm_act_v1.py"),
    "trm": ("recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1", "models/recursive_reasoning/trm.py"),
}
BENCH_KEYS = ("batch_size", "seq_len", "vocab_size", "num_puzzle_identifiers")


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fail(msg):
    print(f"bench_hrm_upstream: {msg}", file=sys.stderr)
    sys.exit(2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--upstream-hrm", help="a sapientinc/HRM checkout (needed for --arch hrm)")
    ap.add_argument("--upstream-trm", help="a TinyRecursiveModels checkout (needed for --arch trm)")
    ap.add_argument("--config", required=True, help="bench config JSON (e.g. models/hrm/bench-2core.json)")
    ap.add_argument("--arch", choices=sorted(ARCHS), default="hrm")
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.steps < 1 or args.warmup < 0:
        fail("--steps must be >= 1 and --warmup >= 0")

    upstream = args.upstream_hrm if args.arch == "hrm" else args.upstream_trm
    if not upstream:
        fail(f"--arch {args.arch} needs --upstream-{args.arch} DIR")
    name, model_file = ARCHS[args.arch]
    upstream = os.path.abspath(upstream)
    if not os.path.isfile(os.path.join(upstream, model_file)):
        fail(f"{upstream}: no {model_file} (not a {args.arch.upper()} checkout?)")
    with open(args.config) as f:
        file_cfg = json.load(f)
    missing = [k for k in BENCH_KEYS if not isinstance(file_cfg.get(k), int)]
    if missing:
        fail(f"{args.config}: missing integer field(s) {', '.join(missing)}")

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    # Shims for CUDA-only imports (HRM's layers.py tries flash_attn_interface, then flash_attn).
    for mod_name in ("flash_attn_interface", "flash_attn"):
        shim = types.ModuleType(mod_name)
        shim.flash_attn_func = flash_attn_func
        sys.modules[mod_name] = shim
    sys.path.insert(0, upstream)
    try:
        from utils.functions import load_model_class
        from models.sparse_embedding import CastedSparseEmbeddingSignSGD_Distributed
        model_cls = load_model_class(name)
        loss_cls = load_model_class(file_cfg.get("loss", {}).get("name", "losses@ACTLossHead"))
    except ImportError as e:
        fail(f"importing upstream {args.arch.upper()} failed ({e}); pip install pydantic einops into this Python")

    # Upstream TRM's ACTLossHead passes valid_mask to its loss function, which only its stablemax
    # accepts (softmax_cross_entropy(logits, labels, ignore_index) raises TypeError). The mask it
    # passes is labels != ignore_index, which softmax's ignore_index already applies: drop it.
    if args.arch == "trm":
        import models.losses as upstream_losses
        plain_softmax = upstream_losses.softmax_cross_entropy

        def softmax_cross_entropy(logits, labels, ignore_index=-100, valid_mask=None):
            return plain_softmax(logits, labels, ignore_index=ignore_index)
        upstream_losses.softmax_cross_entropy = softmax_cross_entropy

    # create_model's model_cfg: arch fields + batch_size, vocab_size, seq_len, num_puzzle_identifiers.
    loss_cfg = dict(file_cfg.get("loss", {}))
    loss_cfg.pop("name", None)
    loss_cfg.setdefault("loss_type", "stablemax_cross_entropy")
    model_cfg = {k: v for k, v in file_cfg.items() if k not in ("loss", "name")}
    model_cfg["causal"] = False
    batch_size, seq_len = file_cfg["batch_size"], file_cfg["seq_len"]
    vocab, puzzles = file_cfg["vocab_size"], file_cfg["num_puzzle_identifiers"]

    torch.manual_seed(0)
    model = loss_cls(model_cls(model_cfg), **loss_cfg)
    model.train()
    batch = {
        "inputs": torch.randint(1, vocab, (batch_size, seq_len), dtype=torch.int32),
        "labels": torch.randint(1, vocab, (batch_size, seq_len), dtype=torch.int32),
        "puzzle_identifiers": torch.randint(0, puzzles, (batch_size,), dtype=torch.int32),
    }
    adam = AdamATan2(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    sign = None
    if model.model.config.puzzle_emb_ndim > 0:
        sign = CastedSparseEmbeddingSignSGD_Distributed(model.model.puzzle_emb.buffers(), world_size=1,
                                                        lr=1e-2, weight_decay=0.1)
    carry = model.initial_carry(batch)

    def step(carry):
        carry, loss, _, _, _ = model(carry=carry, batch=batch, return_keys=[])
        ((1 / batch_size) * loss).backward()
        if sign is not None:
            sign.step()
            sign.zero_grad()
        adam.step()
        adam.zero_grad()
        return carry

    for _ in range(args.warmup):
        carry = step(carry)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        carry = step(carry)
        times.append(1000.0 * (time.perf_counter() - t0))

    print(json.dumps({
        "impl": "upstream-python",
        "arch": args.arch,
        "torch": torch.__version__,
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "dtype": model.model.config.forward_dtype,
        "attention": "exact-f32 (flash_attn shim)" if args.arch == "hrm" else "sdpa (upstream)",
        "batch_size": batch_size,
        "ms_per_step_median": round(statistics.median(times), 3),
        "ms_per_step_min": round(min(times), 3),
        "ms_per_step_mean": round(statistics.fmean(times), 3),
        "examples_per_s": round(batch_size * 1000.0 / statistics.median(times), 2),
        "steps": args.steps,
        "warmup": args.warmup,
        "config": os.path.basename(args.config),
    }))


if __name__ == "__main__":
    main()
