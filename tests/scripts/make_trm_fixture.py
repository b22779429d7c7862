#!/usr/bin/env python3
"""Makes tests/fixtures/trm-reference: the upstream TRM reference (SamsungSAILMontreal/TinyRecursiveModels,
models/recursive_reasoning/trm.py wrapped in models/losses.py ACTLossHead, as pretrain.py builds it) run on
the CPU in float32, for two variants, each in its own folder:
  attn/  attention blocks, pos_encodings rope (the ARC / Maze configuration);
  mlp/   arch.mlp_t=True, pos_encodings none (the Sudoku configuration).

The upstream code is imported at run time from a checkout given on the command line; none of it is
copied here. Get one from the mirror, e.g.
  mkdir -p /tmp/trm-src && git --git-dir=/work/.mirror/SamsungSAILMontreal+TinyRecursiveModels/repo archive HEAD | tar -x -C /tmp/trm-src
  /opt/hrmclara/venv/bin/pip install pydantic einops        # trm.py and layers.py import them
  /opt/hrmclara/venv/bin/python tests/scripts/make_trm_fixture.py --upstream /tmp/trm-src --commit e7b6871

Shims installed into sys.modules before the upstream import (pretrain.py imports them; none of them is on
the path of the numbers): wandb, coolname, hydra, omegaconf, argdantic (stubs), and adam_atan2, whose
AdamATan2 is written here in Python with the adam-atan2 package's update. TRM's layers.py calls
torch's scaled_dot_product_attention itself (no flash_attn), so attention is upstream's own call.
pretrain.py's own PretrainConfig, save_train_state, load_checkpoint (torch.load's map_location="cuda"
redirected to the CPU) and compute_lr are used; its create_model and train_batch are CUDA-bound and are
mirrored line by line below. The compiled module's forward is never called (that would run inductor):
the forward goes through its _orig_mod, the same eager code; state dicts and EMA names come from the
compiled wrapper as on a real run.

Writes per variant: step_0, all_config.yaml, dataset.json, batch.safetensors, expected.safetensors,
ema_step_3 (see tests/fixtures/trm-reference/README.md and SEMANTICS.md); then expected64.safetensors,
the train/eval trajectories and step-0 grads of the same model loaded from step_0 with
forward_dtype float64 and upstream's own float32 casts made float64 in-process (see PromoteFloat32),
after checking that the same harness in float32 reproduces expected.safetensors bit for bit.
"""
import argparse
import collections
import contextlib
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from upstream_shims import AdamATan2  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "fixtures", "trm-reference")

BATCH = 6
HIDDEN = 32  # 64 would put a variant over 2 MB: the SwiGLU's width is rounded up to 256 either way
VARIANTS = {
    # name: (arch overrides, seq_len). The mlp_t variant's token-mixing SwiGLU has
    # 3 * 256 * (seq_len + puzzle_emb_len) weights per layer, so its puzzle is a 4x4 one to stay small.
    "attn": (dict(mlp_t=False, pos_encodings="rope"), 81),
    "mlp": (dict(mlp_t=True, pos_encodings="none"), 16),
}


# ----------------------------------------------------------------------------------------------------
# Shims
def install_shims():
    def stub(name, **attrs):
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        sys.modules[name] = mod
        return mod

    stub("adam_atan2", AdamATan2=AdamATan2)
    stub("wandb", run=None, init=None, log=None, finish=None, Settings=None)
    stub("coolname", generate_slug=lambda n=2: "fixture")
    stub("hydra", main=lambda **kw: (lambda f: f))
    stub("omegaconf", DictConfig=dict)
    stub("argdantic", ArgParser=object)


@contextlib.contextmanager
def cpu_torch_load(cast_to=None):
    """pretrain.load_checkpoint calls torch.load(path, map_location="cuda"); map it to the CPU. With
    cast_to (the float64 reference only), the loaded state dict's floating tensors are converted to that
    dtype before load_state_dict(assign=True) puts them into the model."""
    real = torch.load

    def load(*args, **kwargs):
        kwargs["map_location"] = "cpu"
        state_dict = real(*args, **kwargs)
        if cast_to is not None:
            for k, v in state_dict.items():
                if v.is_floating_point():
                    state_dict[k] = v.to(cast_to)
        return state_dict

    torch.load = load
    try:
        yield
    finally:
        torch.load = real


def upstream_commit(path, given):
    if given:
        return given
    try:
        return subprocess.check_output(["git", "-C", path, "rev-parse", "HEAD"], text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# ----------------------------------------------------------------------------------------------------
def run_config(variant, overrides, seq_len):
    """The hydra config pretrain.py would get from config/cfg_pretrain.yaml + config/arch/trm.yaml with
    these overrides (arch keys in trm.yaml's order)."""
    arch = dict(
        name="recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1",
        loss=dict(name="losses@ACTLossHead", loss_type="stablemax_cross_entropy"),
        halt_exploration_prob=0.0,
        halt_max_steps=4,
        H_cycles=2,
        L_cycles=2,
        H_layers=0,
        L_layers=2,
        hidden_size=HIDDEN,
        num_heads=4,
        expansion=4,
        # 48 = 1.5 positions of 32: position 0 is full, position 1 half puzzle embedding and half zero
        # padding, positions 2 and 3 all padding (puzzle_emb_len 4 where the ceil would give 2).
        puzzle_emb_ndim=48,
        pos_encodings=overrides["pos_encodings"],
        forward_dtype="float32",
        mlp_t=overrides["mlp_t"],
        puzzle_emb_len=4,
        no_ACT_continue=True,
    )
    return dict(
        arch=arch,
        data_paths=["data/fixture"],
        data_paths_test=[],
        evaluators=[],
        global_batch_size=BATCH,
        # total_steps = int(epochs * total_groups * mean_puzzle_examples / global_batch_size) = 3
        epochs=3,
        eval_interval=3,
        checkpoint_every_eval=True,
        lr=1e-3,
        lr_min_ratio=1.0,
        lr_warmup_steps=0,  # with lr_min_ratio 1 compute_lr returns lr (and puzzle_emb_lr) at every step
        beta1=0.9,
        beta2=0.95,
        weight_decay=0.1,
        puzzle_emb_weight_decay=0.1,
        puzzle_emb_lr=1e-2,
        seed=1234,
        min_eval_interval=0,
        ema=True,
        ema_rate=0.9,
        freeze_weights=False,
        project_name="fixture",
        run_name=f"trm-{variant}",
        checkpoint_path=f"checkpoints/fixture/trm-{variant}",
    )


def create_model(pretrain, config, metadata, load=False, load_dtype=None):
    """pretrain.create_model for world size 1 on the CPU (upstream wraps it in torch.device("cuda")).
    load_dtype: see cpu_torch_load (None for the float32 fixture)."""
    from utils.functions import load_model_class
    from models.sparse_embedding import CastedSparseEmbeddingSignSGD_Distributed

    model_cfg = dict(
        **config.arch.__pydantic_extra__,
        batch_size=config.global_batch_size,
        vocab_size=metadata.vocab_size,
        seq_len=metadata.seq_len,
        num_puzzle_identifiers=metadata.num_puzzle_identifiers,
        causal=False,
    )
    model_cls = load_model_class(config.arch.name)
    loss_head_cls = load_model_class(config.arch.loss.name)
    model = model_cls(model_cfg)
    model = loss_head_cls(model, **config.arch.loss.__pydantic_extra__)
    model = torch.compile(model)  # lazy: nothing is compiled until it is called, and it never is here
    if load:
        with cpu_torch_load(load_dtype):
            pretrain.load_checkpoint(model, config)
    optimizers = [
        CastedSparseEmbeddingSignSGD_Distributed(model.model.puzzle_emb.buffers(), lr=0,
                                                 weight_decay=config.puzzle_emb_weight_decay, world_size=1),
        AdamATan2(model.parameters(), lr=0, weight_decay=config.weight_decay, betas=(config.beta1, config.beta2)),
    ]
    return model, optimizers, [config.puzzle_emb_lr, config.lr]


def make_batch(vocab, seq_len, gen):
    inputs = torch.randint(0, vocab, (BATCH, seq_len), generator=gen, dtype=torch.int32)
    labels = torch.randint(1, vocab, (BATCH, seq_len), generator=gen, dtype=torch.int32)
    # Ignored cells (the loader maps the dataset's ignore_label_id 0 to -100) in two rows, and row 5 a
    # padding row as the loader makes one: inputs pad_id, labels all ignored, the blank identifier.
    labels[1, 5] = -100
    labels[3, 7] = -100
    labels[3, seq_len - 1] = -100
    inputs[5] = 0
    labels[5] = -100
    # Duplicate identifiers, so SignSGD's scatter_add of rows sharing an id is exercised.
    puzzle_identifiers = torch.tensor([1, 2, 1, 2, 2, 0], dtype=torch.int32)
    return {"inputs": inputs, "labels": labels, "puzzle_identifiers": puzzle_identifiers}


def record_step(out, prefix, carry, loss, metrics, outputs, with_state):
    out[f"{prefix}.logits"] = outputs["logits"].float().contiguous()
    out[f"{prefix}.q_halt_logits"] = outputs["q_halt_logits"].float().contiguous()
    out[f"{prefix}.q_continue_logits"] = outputs["q_continue_logits"].float().contiguous()
    out[f"{prefix}.loss"] = loss.detach().double()
    for k, v in metrics.items():
        out[f"{prefix}.metric.{k}"] = v.detach().double()
    out[f"{prefix}.halted"] = carry.halted.clone()
    out[f"{prefix}.steps"] = carry.steps.clone()
    if with_state:
        out[f"{prefix}.z_H"] = carry.inner_carry.z_H.float().contiguous()
        out[f"{prefix}.z_L"] = carry.inner_carry.z_L.float().contiguous()


RETURN_KEYS = ["logits", "q_halt_logits", "q_continue_logits"]


def check_act_continue_path(head, batch):
    """no_ACT_continue=False in training: trm.py unpacks five values from inner(), which returns three."""
    inner_model = head.model
    saved = inner_model.config.no_ACT_continue
    inner_model.config.no_ACT_continue = False
    try:
        with torch.no_grad():
            head(carry=inner_model.initial_carry(batch), batch=batch, return_keys=[])
        return "runs"
    except ValueError as e:
        return f"ValueError: {e}"
    finally:
        inner_model.config.no_ACT_continue = saved


def make_variant(pretrain, variant, out_dir, commit):
    from dataset.common import PuzzleDatasetMetadata
    from models.common import trunc_normal_init_
    from models.ema import EMAHelper

    overrides, seq_len = VARIANTS[variant]
    os.makedirs(out_dir, exist_ok=True)
    config = pretrain.PretrainConfig(**run_config(variant, overrides, seq_len))
    # As dataset/build_sudoku_dataset.py writes it (json.dump(metadata.model_dump(), f)).
    metadata = PuzzleDatasetMetadata(pad_id=0, ignore_label_id=0, blank_identifier_id=0, vocab_size=11,
                                     seq_len=seq_len, num_puzzle_identifiers=3, total_groups=BATCH,
                                     mean_puzzle_examples=1, total_puzzles=BATCH, sets=["all"])
    with open(os.path.join(out_dir, "dataset.json"), "w") as f:
        json.dump(metadata.model_dump(), f)
    # save_code_and_config: yaml.dump(config.model_dump(), f)
    with open(os.path.join(out_dir, "all_config.yaml"), "wt") as f:
        yaml.dump(config.model_dump(), f)

    # launch(): torch.random.manual_seed(config.seed + RANK) before the model is made.
    torch.random.manual_seed(config.seed)
    model, _, _ = create_model(pretrain, config, metadata)
    inner = model.model.inner
    # Upstream zero-initialises the puzzle embedding and the Q head's weight (bias -5); random values
    # here so every path carries signal.
    with torch.no_grad():
        trunc_normal_init_(inner.puzzle_emb.weights, std=1.0 / HIDDEN ** 0.5)
        trunc_normal_init_(inner.q_head.weight, std=1.0 / HIDDEN ** 0.5)
        inner.q_head.bias.copy_(0.1 * torch.randn(2))

    gen = torch.Generator().manual_seed(20261129)
    batch = make_batch(metadata.vocab_size, seq_len, gen)
    head = model._orig_mod  # the compiled module's forward, run eagerly
    # Row 0's labels := the step-0 prediction on its labelled cells, so that one sequence is exactly
    # right at step 0 (exact_accuracy, q_halt target 1).
    head.train()
    with torch.no_grad():
        _, _, _, outs, _ = head(carry=head.initial_carry(batch), batch=batch, return_keys=["preds", "q_halt_logits"])
        batch["labels"][0] = torch.where(batch["labels"][0] == -100, batch["labels"][0], outs["preds"][0].to(torch.int32))
        # Shift the Q head's halt bias so that step 0 splits the batch (q_halt_logits > 0 halts) with at
        # least two rows on each side, the threshold in the widest such gap (away from rounding), and row 0
        # on the halting side where a gap below it allows (attn: yes; mlp: row 0 is among the lowest two).
        q = outs["q_halt_logits"]
        s = q.sort().values.tolist()
        cuts = [((s[i + 1] - s[i]), (s[i] + s[i + 1]) / 2) for i in range(1, BATCH - 2)]
        cuts = [c for c in cuts if c[1] < q[0].item()] or cuts
        inner.q_head.bias[0] -= max(cuts)[1]
    save_file(batch, os.path.join(out_dir, "batch.safetensors"))

    # step_0 exactly as save_train_state writes it.
    ckpt_config = config.model_copy(update=dict(checkpoint_path=out_dir))
    train_state = pretrain.TrainState(model=model, optimizers=[], optimizer_lrs=[], carry=None, step=0, total_steps=0)
    pretrain.save_train_state(ckpt_config, train_state)

    expected = {}
    # Train mode trajectory; grads of step 0's total loss.
    head.train()
    carry = head.initial_carry(batch)
    for k in range(4):
        carry, loss, metrics, outputs, _ = head(carry=carry, batch=batch, return_keys=RETURN_KEYS)
        record_step(expected, f"train.{k}", carry, loss, metrics, outputs, with_state=True)
        if k == 0:
            loss.backward()
            for name, p in head.named_parameters():
                expected[f"grad.{name}"] = p.grad.detach().clone()
            expected["grad.model.inner.puzzle_emb.local_weights"] = inner.puzzle_emb.local_weights.grad.detach().clone()
            head.zero_grad(set_to_none=True)
            inner.puzzle_emb.local_weights.grad = None
    act_continue = check_act_continue_path(head, batch)

    # Eval mode, as evaluate() runs it (inference mode, steps until all halted = halt_max_steps).
    head.eval()
    with torch.inference_mode():
        carry = head.initial_carry(batch)
        for k in range(4):
            carry, loss, metrics, outputs, all_finish = head(carry=carry, batch=batch, return_keys=RETURN_KEYS)
            record_step(expected, f"eval.{k}", carry, loss, metrics, outputs, with_state=False)
        assert bool(all_finish)

    # Training replay from step_0: init_train_state (create, load_checkpoint, optimizers), EMA registered
    # on train_state.model (the compiled wrapper), then train_batch + ema_helper.update per batch.
    load_config = ckpt_config.model_copy(update=dict(load_checkpoint=os.path.join(out_dir, "step_0")))
    torch.random.manual_seed(config.seed)
    model, optimizers, optimizer_lrs = create_model(pretrain, load_config, metadata, load=True)
    total_steps = int(config.epochs * metadata.total_groups * metadata.mean_puzzle_examples / config.global_batch_size)
    train_state = pretrain.TrainState(model=model, optimizers=optimizers, optimizer_lrs=optimizer_lrs, carry=None,
                                      step=0, total_steps=total_steps)
    ema_helper = EMAHelper(mu=config.ema_rate)
    ema_helper.register(train_state.model)
    train_state.model.train()
    lrs = []
    for k in range(3):
        # train_batch(), less .cuda() and the metric reduction.
        train_state.step += 1
        assert train_state.step <= train_state.total_steps
        if train_state.carry is None:
            train_state.carry = train_state.model.initial_carry(batch)
        train_state.carry, loss, metrics, _, _ = train_state.model._orig_mod(carry=train_state.carry, batch=batch,
                                                                             return_keys=[])
        ((1 / config.global_batch_size) * loss).backward()
        for optim, base_lr in zip(train_state.optimizers, train_state.optimizer_lrs):
            lr_this_step = pretrain.compute_lr(base_lr, config, train_state)
            lrs.append(lr_this_step)
            for param_group in optim.param_groups:
                param_group["lr"] = lr_this_step
            optim.step()
            optim.zero_grad()
        ema_helper.update(train_state.model)
        expected[f"trainstep.{k}.loss"] = loss.detach().double()
        expected[f"trainstep.{k}.halted"] = train_state.carry.halted.clone()
        expected[f"trainstep.{k}.steps"] = train_state.carry.steps.clone()
    assert lrs == [config.puzzle_emb_lr, config.lr] * 3, lrs
    for key, v in train_state.model.state_dict().items():
        assert key.startswith("_orig_mod.")
        expected["trainstep.final." + key[len("_orig_mod."):]] = v.detach().clone()
    for name, v in ema_helper.state_dict().items():
        expected[f"ema.final.{name}"] = v.detach().clone()
    # The evaluation that follows: train_state_eval.model = ema_helper.ema_copy(...); save_train_state.
    # Written by save_train_state as checkpoint_path/step_3 (so the zip's records are under step_3/, as
    # on a real run), then renamed ema_step_3 to keep it apart from step_0.
    train_state_eval = copy.copy(train_state)
    train_state_eval.model = ema_helper.ema_copy(train_state.model)
    with tempfile.TemporaryDirectory() as tmp:
        pretrain.save_train_state(ckpt_config.model_copy(update=dict(checkpoint_path=tmp)), train_state_eval)
        shutil.move(os.path.join(tmp, f"step_{train_state.step}"), os.path.join(out_dir, f"ema_step_{train_state.step}"))

    expected = {k: v.contiguous() for k, v in sorted(expected.items())}
    save_file(expected, os.path.join(out_dir, "expected.safetensors"),
              metadata={"reference": f"SamsungSAILMontreal/TinyRecursiveModels@{commit} "
                                     "models/recursive_reasoning/trm.py + models/losses.py + models/ema.py",
                        "torch": torch.__version__, "variant": variant})

    qmin = min(expected[f"{m}.{k}.q_halt_logits"].abs().min().item() for m in ("train", "eval") for k in range(4))
    halts = " ".join("".join("H" if h else "." for h in expected[f"train.{k}.halted"].tolist()) for k in range(4))
    sizes = sum(os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir))
    print(f"{variant}: train halted per step {halts} | loss {[round(expected[f'train.{k}.loss'].item(), 4) for k in range(4)]}"
          f" | trainstep loss {[round(expected[f'trainstep.{k}.loss'].item(), 4) for k in range(3)]}"
          f" | min |q_halt| {qmin:.3g} | no_ACT_continue=False: {act_continue} | {sizes / 1e6:.2f} MB")


# ----------------------------------------------------------------------------------------------------
# expected64.safetensors: the same model, checkpoint and batch run in float64.
#
# In the mlp_t variant float32 rounding is amplified by the recursion (at eval ACT step 3 a float64 port
# and the float32 fixture differ by ~1e-3 relative), so a port's math is checked in float64 against this
# file and its float32 error bounded separately. arch.forward_dtype = "float64" alone is not enough:
# upstream names float32 itself in a few places, which are made float64 here in-process (the checkout is
# not modified) by PromoteFloat32 below:
#   models/layers.py  rms_norm:                 hidden_states.to(torch.float32) (the norm's arithmetic)
#   models/layers.py  RotaryEmbedding.__init__: torch.arange(..., dtype=torch.float32) (inv_freq, t: so
#                                               the cos/sin tables are computed in float64; attn only)
#   models/recursive_reasoning/trm.py forward:  self.q_head(...).to(torch.float32) (the Q logits)
#   models/losses.py ACTLossHead.forward:       is_correct.to(torch.float32) (the accuracy metric only)
# CastedEmbedding / CastedSparseEmbedding cast to forward_dtype, i.e. float64 already. Tensors upstream
# creates without a dtype (parameters before loading, the sparse embedding's local_weights) are made
# under torch.set_default_dtype(float64); step_0's float32 values are converted to float64 (exactly) as
# they are loaded (cpu_torch_load(cast_to)). The forward is then checked: every parameter and buffer is
# float64 and no torch call under the mode returns a float32 tensor.


class PromoteFloat32(TorchFunctionMode):
    """A torch function mode that, in a torch call made by upstream's code (the nearest caller outside
    the torch package is a file of the upstream checkout), replaces every torch.float32 among the
    arguments by `dtype`. Calls from elsewhere (torch.load's unpickler, this script) are left alone.
    `promoted` counts the upstream call sites where it did so; with `check` set, `float32_outputs`
    counts calls (by function and caller) that returned a float32 tensor. With dtype float32 it changes
    nothing (the sanity run)."""

    def __init__(self, dtype, upstream):
        super().__init__()
        self.dtype = dtype
        self.upstream = os.path.join(os.path.abspath(upstream), "")
        self.torch_dir = os.path.join(os.path.dirname(os.path.abspath(torch.__file__)), "")
        self.check = False
        self.promoted = collections.Counter()
        self.float32_outputs = collections.Counter()

    def _caller(self):
        frame = sys._getframe(2)
        while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(self.torch_dir):
            frame = frame.f_back
        if frame is None:
            return None, "?"
        path = os.path.abspath(frame.f_code.co_filename)
        return path, f"{os.path.relpath(path, self.upstream)}:{frame.f_lineno} {frame.f_code.co_name}"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.dtype != torch.float32:
            named = [a for a in list(args) + list(kwargs.values()) if a is torch.float32]
            if named:
                path, site = self._caller()
                if path is not None and path.startswith(self.upstream):
                    args = tuple(self.dtype if a is torch.float32 else a for a in args)
                    kwargs = {k: self.dtype if v is torch.float32 else v for k, v in kwargs.items()}
                    self.promoted[site] += 1
        out = func(*args, **kwargs)
        if self.check and any(isinstance(t, torch.Tensor) and t.dtype == torch.float32 for t in tree_leaves(out)):
            self.float32_outputs[f"{getattr(func, '__qualname__', func)} from {self._caller()[1]}"] += 1
        return out


def record_native(out, prefix, carry, loss, outputs, with_state):
    """record_step's tensors (no metrics) in the model's own dtype."""
    for k in RETURN_KEYS:
        out[f"{prefix}.{k}"] = outputs[k].detach().clone()
    out[f"{prefix}.loss"] = loss.detach().double()
    out[f"{prefix}.halted"] = carry.halted.clone()
    out[f"{prefix}.steps"] = carry.steps.clone()
    if with_state:
        out[f"{prefix}.z_H"] = carry.inner_carry.z_H.clone()
        out[f"{prefix}.z_L"] = carry.inner_carry.z_L.clone()


def run_reference(pretrain, variant, out_dir, dtype):
    """Rebuilds the variant's model with arch.forward_dtype = dtype from out_dir/step_0 (create_model +
    pretrain.load_checkpoint, as the training replay does) and runs expected.safetensors' train (4 ACT
    steps, grads of step 0's total loss) and eval (4 ACT steps) trajectories on batch.safetensors.
    Returns the recorded tensors in dtype and the PromoteFloat32 mode used."""
    from dataset.common import PuzzleDatasetMetadata

    overrides, seq_len = VARIANTS[variant]
    cfg = run_config(variant, overrides, seq_len)
    cfg["arch"]["forward_dtype"] = str(dtype).removeprefix("torch.")
    cfg["load_checkpoint"] = os.path.join(out_dir, "step_0")
    config = pretrain.PretrainConfig(**cfg)
    with open(os.path.join(out_dir, "dataset.json")) as f:
        metadata = PuzzleDatasetMetadata(**json.load(f))
    batch = load_file(os.path.join(out_dir, "batch.safetensors"))

    mode = PromoteFloat32(dtype, os.path.dirname(pretrain.__file__))
    default_dtype = torch.get_default_dtype()
    torch.random.manual_seed(config.seed)
    torch.set_default_dtype(dtype)
    try:
        with mode:
            model, _, _ = create_model(pretrain, config, metadata, load=True, load_dtype=dtype)
    finally:
        torch.set_default_dtype(default_dtype)
    head = model._orig_mod
    inner = head.model.inner
    for name, t in list(head.named_parameters()) + list(head.named_buffers()):
        assert not t.is_floating_point() or t.dtype == dtype, (name, t.dtype)
    assert inner.puzzle_emb.local_weights.is_leaf and inner.puzzle_emb.local_weights.requires_grad

    out = {}
    mode.check = dtype != torch.float32
    with mode:
        head.train()
        carry = head.initial_carry(batch)
        for k in range(4):
            carry, loss, _, outputs, _ = head(carry=carry, batch=batch, return_keys=RETURN_KEYS)
            record_native(out, f"train.{k}", carry, loss, outputs, with_state=True)
            if k == 0:
                loss.backward()
                for name, p in head.named_parameters():
                    out[f"grad.{name}"] = p.grad.detach().clone()
                out["grad.model.inner.puzzle_emb.local_weights"] = inner.puzzle_emb.local_weights.grad.detach().clone()
                head.zero_grad(set_to_none=True)
                inner.puzzle_emb.local_weights.grad = None
        head.eval()
        with torch.inference_mode():
            carry = head.initial_carry(batch)
            for k in range(4):
                carry, loss, _, outputs, all_finish = head(carry=carry, batch=batch, return_keys=RETURN_KEYS)
                record_native(out, f"eval.{k}", carry, loss, outputs, with_state=False)
            assert bool(all_finish)
    mode.check = False
    return out, mode


def make_expected64(pretrain, variant, out_dir, commit):
    ref = load_file(os.path.join(out_dir, "expected.safetensors"))

    # Sanity: the same harness in float32 (the mode changes nothing there) reproduces expected.safetensors
    # bit for bit, so the float64 file differs from it by the dtype alone.
    out32, _ = run_reference(pretrain, variant, out_dir, torch.float32)
    for k, v in out32.items():
        r = ref[k]
        assert v.dtype == r.dtype and torch.equal(v, r), f"{variant}: float32 rerun differs from expected.safetensors at {k}"

    out64, mode = run_reference(pretrain, variant, out_dir, torch.float64)
    assert not mode.float32_outputs, f"{variant}: float32 tensors in the float64 run: {dict(mode.float32_outputs)}"
    promoted = sorted(mode.promoted)
    assert any("rms_norm" in s for s in promoted) and any("trm.py" in s for s in promoted), promoted
    for k, v in out64.items():
        assert v.dtype in (torch.float64, torch.bool, torch.int32), (k, v.dtype)
        if v.dtype != torch.float64:  # halting decisions and step counts are the float32 fixture's
            assert torch.equal(v, ref[k]), f"{variant}: float64 {k} differs from expected.safetensors"
    assert out64["eval.3.logits"].dtype == torch.float64 and out64["train.0.q_halt_logits"].dtype == torch.float64

    out64 = {k: v.contiguous() for k, v in sorted(out64.items())}
    path = os.path.join(out_dir, "expected64.safetensors")
    save_file(out64, path, metadata={
        "reference": f"SamsungSAILMontreal/TinyRecursiveModels@{commit} "
                     "models/recursive_reasoning/trm.py + models/losses.py",
        "torch": torch.__version__, "variant": variant, "forward_dtype": "float64",
        "float32_promoted_at": "; ".join(promoted)})

    def rel(k):
        a, b = out64[k], ref[k].double()
        return ((a - b).abs().max() / a.abs().max()).item()

    print(f"{variant}: expected64.safetensors {os.path.getsize(path) / 1e6:.2f} MB; float32 rerun == expected.safetensors "
          f"({len(out32)} tensors); float32 promoted at: {', '.join(promoted)}")
    print(f"{variant}: fixture (f32) vs float64, max|f32 - f64| / max|f64|:")
    print("   k  train.logits  train.q_halt   train.z_H   train.loss  eval.logits  eval.q_halt   eval.loss")
    for k in range(4):
        print(f"   {k}" + "".join(f"  {rel(f'{m}.{k}.{t}'):11.3e}" for m, t in
                                 [("train", "logits"), ("train", "q_halt_logits"), ("train", "z_H"), ("train", "loss"),
                                  ("eval", "logits"), ("eval", "q_halt_logits"), ("eval", "loss")]))
    grads = {k: rel(k) for k in out64 if k.startswith("grad.")}
    worst = max(grads, key=grads.get)
    print(f"   grads (train step 0): max {grads[worst]:.3e} ({worst}), median {sorted(grads.values())[len(grads) // 2]:.3e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--upstream", required=True, help="a TinyRecursiveModels checkout (work tree)")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--commit", default="", help="the checkout's commit (default: git rev-parse HEAD there)")
    ap.add_argument("--variant", choices=sorted(VARIANTS), action="append", help="default: all")
    args = ap.parse_args()
    upstream = os.path.abspath(args.upstream)
    if not os.path.isfile(os.path.join(upstream, "models", "recursive_reasoning", "trm.py")):
        sys.exit(f"{upstream}: not a TinyRecursiveModels checkout (no models/recursive_reasoning/trm.py)")
    commit = upstream_commit(upstream, args.commit)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    install_shims()
    sys.path.insert(0, upstream)
    import pretrain  # noqa: E402 (upstream, from --upstream)

    for variant in args.variant or sorted(VARIANTS):
        out_dir = os.path.join(args.out, variant)
        make_variant(pretrain, variant, out_dir, commit)
        make_expected64(pretrain, variant, out_dir, commit)
        for name in os.listdir(out_dir):  # safetensors writes its files 0600
            os.chmod(os.path.join(out_dir, name), 0o644)


if __name__ == "__main__":
    main()
