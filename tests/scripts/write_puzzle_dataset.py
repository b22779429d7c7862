#!/usr/bin/python3
"""Writes a small random puzzle dataset in sapientinc/HRM's on-disk layout (dataset/common.py):
<out>/identifiers.json, <out>/{train,test}/dataset.json and all__*.npy, saved with numpy as the
upstream builders save them. Used by the C++ tests of the dataset reader; needs only numpy.

Example: write_puzzle_dataset.py OUT --seq-len 81 --vocab 11 --groups 10 --puzzles-per-group 2 \
    --examples-per-puzzle 3 --dtype uint8 --ignore-label 0 --identifiers 21
"""
import argparse
import json
import os

import numpy as np


def write_split(path, args, rng, groups):
    os.makedirs(path, exist_ok=True)
    inputs, labels, puzzle_identifiers, puzzle_indices, group_indices = [], [], [], [0], [0]
    next_id = 1
    for _ in range(groups):
        for _ in range(args.puzzles_per_group):
            for _ in range(args.examples_per_puzzle):
                inputs.append(rng.integers(1, args.vocab, size=args.seq_len))
                lab = rng.integers(1, args.vocab, size=args.seq_len)
                if args.ignore_label is not None:
                    lab[rng.random(args.seq_len) < 0.2] = args.ignore_label
                if args.zero_label_share > 0:
                    lab[rng.random(args.seq_len) < args.zero_label_share] = 0
                labels.append(lab)
            puzzle_identifiers.append(next_id if args.identifiers > 1 else 0)
            next_id = next_id % (args.identifiers - 1) + 1 if args.identifiers > 1 else 0
            puzzle_indices.append(len(inputs))
        group_indices.append(len(puzzle_identifiers))
    dtype = np.dtype(args.dtype)
    np.save(os.path.join(path, "all__inputs.npy"), np.stack(inputs).astype(dtype))
    np.save(os.path.join(path, "all__labels.npy"), np.stack(labels).astype(dtype))
    np.save(os.path.join(path, "all__puzzle_identifiers.npy"), np.array(puzzle_identifiers, dtype=np.int32))
    np.save(os.path.join(path, "all__puzzle_indices.npy"), np.array(puzzle_indices, dtype=np.int32))
    np.save(os.path.join(path, "all__group_indices.npy"), np.array(group_indices, dtype=np.int32))
    meta = {
        "pad_id": 0,
        "ignore_label_id": args.ignore_label,
        "blank_identifier_id": 0,
        "vocab_size": args.vocab,
        "seq_len": args.seq_len,
        "num_puzzle_identifiers": args.identifiers,
        "total_groups": groups,
        "mean_puzzle_examples": float(args.examples_per_puzzle),
        "sets": ["all"],
    }
    with open(os.path.join(path, "dataset.json"), "w") as f:
        json.dump(meta, f)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--seq-len", type=int, default=16)
    p.add_argument("--vocab", type=int, default=6)
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--test-groups", type=int, default=3)
    p.add_argument("--puzzles-per-group", type=int, default=1)
    p.add_argument("--examples-per-puzzle", type=int, default=1)
    p.add_argument("--dtype", default="uint8")
    p.add_argument("--ignore-label", type=int, default=None)
    p.add_argument("--zero-label-share", type=float, default=0.0,
                   help="share of labels set to 0 (a real class when ignore_label_id is null)")
    p.add_argument("--identifiers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    write_split(os.path.join(args.out, "train"), args, rng, args.groups)
    write_split(os.path.join(args.out, "test"), args, rng, args.test_groups)
    with open(os.path.join(args.out, "identifiers.json"), "w") as f:
        json.dump(["<blank>"] + [f"p{i}" for i in range(1, args.identifiers)], f)


if __name__ == "__main__":
    main()
