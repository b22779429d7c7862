#!/usr/bin/env python3
"""Writes the seed corpora and dictionaries of the fuzz harnesses (fuzz/README.md).

    fuzz/seeds.py OUT_DIR [TARGET...]

For each target: OUT_DIR/seeds/TARGET/ (fixtures of tests/fixtures and models/, and small hand-made
inputs) and OUT_DIR/dict/TARGET.dict (libFuzzer's -dict format). Python's standard library only;
deterministic; rewrites what it writes on every run (a second of work). Seeds are not committed:
they are copied or derived from the repository's fixtures at run time.
"""
import hashlib
import io
import json
import os
import pickle
import re
import shutil
import struct
import sys
import types
import zipfile
from collections import OrderedDict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
SEP = b"\n--8<--\n"  # fuzz_common.h's kSeparator
ABSENT = b"@absent"  # fuzz_common.h's kAbsent
MAX_SEED = 64 << 10  # scripts/fuzz.sh's default -max_len: larger files are not seeds


def fixtures(*patterns):
    """Files under tests/fixtures whose relative path matches one of the regexes, sorted."""
    out = []
    for dirpath, _, files in os.walk(FIX):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), FIX)
            if any(re.search(p, rel) for p in patterns):
                out.append(os.path.join(dirpath, f))
    return sorted(out)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def joined(*parts):
    return SEP.join(p if isinstance(p, bytes) else p.encode() for p in parts)


# ---- hand-made torch.save pickles ------------------------------------------------------------
# Fake modules so that Python's own pickler writes the globals torch.save writes (no torch needed).
def _fake_torch():
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    for name in ("FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage", "LongStorage", "IntStorage",
                 "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage", "UntypedStorage", "ComplexFloatStorage"):
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch, name, cls)

    def _rebuild_tensor_v2(*args):
        raise NotImplementedError

    def _rebuild_parameter(*args):
        raise NotImplementedError

    def _rebuild_sparse_tensor(*args):
        raise NotImplementedError

    for fn in (_rebuild_tensor_v2, _rebuild_parameter, _rebuild_sparse_tensor):
        fn.__module__ = "torch._utils"
        fn.__qualname__ = fn.__name__
        setattr(utils, fn.__name__, fn)
    torch._utils = utils
    sys.modules.setdefault("torch", torch)
    sys.modules.setdefault("torch._utils", utils)
    return sys.modules["torch"], sys.modules["torch._utils"]


class _Storage:
    def __init__(self, cls, key, numel):
        self.cls, self.key, self.numel = cls, key, numel


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce__(self):
        _, utils = _fake_torch()
        return (utils._rebuild_tensor_v2, (self.storage, self.offset, tuple(self.size), tuple(self.stride), False,
                                           OrderedDict()))


class _Param:
    def __init__(self, tensor):
        self.tensor = tensor

    def __reduce__(self):
        _, utils = _fake_torch()
        return (utils._rebuild_parameter, (self.tensor, True, OrderedDict()))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            return ("storage", obj.cls, obj.key, "cpu", obj.numel)
        return None


def torch_pickles():
    """(name, data.pkl bytes) of hand-made torch.save-style pickles; storages are keys "0".."15" of
    at most 4096 bytes, as fuzz_torch_pickle.cpp provides."""
    torch, _ = _fake_torch()
    f32 = _Storage(torch.FloatStorage, "0", 16)
    i64 = _Storage(torch.LongStorage, "1", 8)
    f64 = _Storage(torch.DoubleStorage, "2", 4)
    half = _Storage(torch.HalfStorage, "3", 12)
    bf16 = _Storage(torch.BFloat16Storage, "4", 12)
    u8 = _Storage(torch.ByteStorage, "5", 32)
    b = _Storage(torch.BoolStorage, "6", 5)
    i32 = _Storage(torch.IntStorage, "7", 6)
    objs = {
        "state_dict": OrderedDict([("w", _Tensor(f32, 0, [4, 4], [4, 1])), ("b", _Tensor(f32, 12, [4], [1])),
                                   ("ids", _Tensor(i64, 0, [8], [1]))]),
        "views": OrderedDict([("t", _Tensor(f32, 0, [4, 4], [1, 4])), ("row", _Tensor(f32, 4, [4], [1])),
                              ("step", _Tensor(f32, 1, [3], [5])), ("empty", _Tensor(f32, 0, [0, 3], [3, 1])),
                              ("scalar", _Tensor(f64, 3, [], []))]),
        "nested": {"model": {"layer": [_Tensor(half, 0, [3, 4], [4, 1]), _Tensor(bf16, 0, [12], [1])]},
                   "opt": {"step": 3, "lr": 0.5, "name": "adam", "flags": (True, False, None)},
                   7: _Tensor(u8, 0, [2, 16], [16, 1])},
        "params": {"p": _Param(_Tensor(f32, 0, [16], [1])), "mask": _Tensor(b, 0, [5], [1]),
                   "i": _Tensor(i32, 2, [2, 2], [2, 1])},
        "list": [_Tensor(f32, 0, [2], [1]), [_Tensor(i64, 0, [2, 2], [2, 1]), b"bytes", "text" * 3], 2 ** 40, -5],
        "shared": [_Tensor(f32, 0, [16], [1])] * 3,
        "plain": {"a": [1, 2.5, "x", None, True], "b": (1,), "c": {}, "d": [], "e": b"\x00\xff", "f": -(2 ** 63)},
    }
    out = []
    for name, obj in objs.items():
        for proto in (2, 3, 4, 5):
            buf = io.BytesIO()
            _Pickler(buf, protocol=proto).dump(obj)
            out.append((f"{name}-p{proto}", buf.getvalue()))
    return out


def torch_zip(pkl, storages=()):
    """A zip as torch.save writes it (stored, prefix "archive/")."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", b"little")
        for key, data in storages:
            z.writestr(f"archive/data/{key}", data)
        z.writestr("archive/version", b"3\n")
    return buf.getvalue()


# ---- safetensors and npy -----------------------------------------------------------------------
def safetensors(tensors, metadata=None, pad=True):
    """tensors: [(name, dtype, shape, bytes)]"""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    if pad:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def npy(descr, shape, raw, version=1, extra="", fortran=False, long_suffix=False):
    dims = ", ".join(f"{d}{'L' if long_suffix else ''}" for d in shape) + ("," if len(shape) == 1 else "")
    d = f"{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': ({dims}), {extra}}}"
    if version == 1:
        pre = 10
        total = pre + len(d) + 1
        d += " " * ((64 - total % 64) % 64) + "\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(d)) + d.encode() + raw
    pre = 12
    total = pre + len(d) + 1
    d += " " * ((64 - total % 64) % 64) + "\n"
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<I", len(d)) + d.encode("utf-8") + raw


def npy_ints(values, shape, code="<i8"):
    fmt = {"<i8": "q", "<i4": "i", "|u1": "B", "<i2": "h", "|i1": "b", "<u2": "H", "<u4": "I", "<u8": "Q"}[code]
    return npy(code, shape, struct.pack("<" + fmt * len(values), *values))


# ---- per-target seeds ------------------------------------------------------------------------
def seeds_torch_save():
    out = {os.path.relpath(p, FIX): read(p) for p in fixtures(r"\.(pt|pth)$") if os.path.getsize(p) <= MAX_SEED}
    # Plus the data.pkl of the big fixtures with storages cut to what the pickle needs is not
    # possible without parsing; the hand-made pickles with their storages instead.
    for name, pkl in torch_pickles():
        storages = [(str(k), bytes((i * 131 + 7) & 0xFF for i in range(4096))) for k in range(8)]
        out[f"made-{name}.pt"] = torch_zip(pkl, storages)
    return out


def seeds_torch_pickle():
    out = {}
    for p in fixtures(r"\.(pt|pth)$|step_0$"):
        try:
            with zipfile.ZipFile(p) as z:
                for n in z.namelist():
                    if n.endswith("/data.pkl") or n == "data.pkl":
                        out[os.path.relpath(p, FIX) + ".pkl"] = z.read(n)
        except zipfile.BadZipFile:
            pass
    for name, pkl in torch_pickles():
        out[f"made-{name}.pkl"] = pkl
    return out


def seeds_safetensors():
    out = {os.path.relpath(p, FIX): read(p) for p in fixtures(r"\.safetensors$") if os.path.getsize(p) <= MAX_SEED}
    every = [("f32", "F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)), ("f64", "F64", [1], struct.pack("<d", 1.5)),
             ("bf16", "BF16", [2], b"\x80\x3f\x00\x40"), ("f16", "F16", [2], b"\x00\x3c\x00\x40"),
             ("i64", "I64", [2], struct.pack("<2q", -1, 7)), ("i32", "I32", [1], struct.pack("<i", 5)),
             ("i16", "I16", [2], struct.pack("<2h", 1, -1)), ("i8", "I8", [3], b"\x01\x80\x7f"),
             ("u8", "U8", [2, 1], b"\x00\xff"), ("bool", "BOOL", [2], b"\x00\x01"),
             ("e4m3", "F8_E4M3", [2], b"\x38\x40"), ("e5m2", "F8_E5M2", [2], b"\x3c\x40")]
    out["made-every-dtype.safetensors"] = safetensors(every, {"format": "pt"})
    out["made-unaligned.safetensors"] = safetensors([("u8", "U8", [3], b"abc"), ("f32", "F32", [2], b"\0" * 8)], pad=False)
    out["made-empty-and-scalar.safetensors"] = safetensors(
        [("e", "F32", [0, 4], b""), ("s", "F64", [], struct.pack("<d", 2.0))], {"k": "v", "n": "1"})
    out["made-no-tensors.safetensors"] = safetensors([], {"only": "metadata"})
    return out


def seeds_safetensors_index():
    out = {}
    for p in fixtures(r"\.safetensors\.index\.json$"):
        out[os.path.relpath(p, FIX)] = read(p)
    tiny = {"metadata": {"total_size": 56}, "weight_map": {"a": "tiny.safetensors", "b": "tiny.safetensors"}}
    out["made-tiny.json"] = json.dumps(tiny).encode()
    both = json.loads(read(os.path.join(FIX, "clara-reference", "model.safetensors.index.json")))
    both["weight_map"]["a"] = "tiny.safetensors"
    out["made-mixed.json"] = json.dumps(both).encode()
    for name, shard in (("garbage", "garbage.safetensors"), ("empty", "empty.safetensors"),
                        ("folder", "folder.safetensors"), ("missing", "missing.safetensors")):
        out[f"made-{name}.json"] = json.dumps({"weight_map": {"a": shard}}).encode()
    out["made-wrong-shard.json"] = json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors"}}).encode()
    return out


def seeds_npy():
    out = {os.path.relpath(p, FIX): read(p) for p in fixtures(r"\.npy$")}
    out["made-v2.npy"] = npy("<f4", [2], struct.pack("<2f", 1, 2), version=2)
    out["made-v3.npy"] = npy("<i8", [1, 2], struct.pack("<2q", 3, 4), version=3)
    out["made-long.npy"] = npy("|u1", [2, 2], b"\x01\x02\x03\x04", long_suffix=True)
    out["made-extra-key.npy"] = npy("<i2", [2], struct.pack("<2h", 1, 2), extra="'extra': [1, (2, 3), {'x': 'y'}], ")
    out["made-native.npy"] = npy("=i4", [1], struct.pack("<i", 9))
    out["made-u2.npy"] = npy_ints([1, 65535], [2], "<u2")
    out["made-u4.npy"] = npy_ints([1, 2 ** 32 - 1], [2], "<u4")
    out["made-u8.npy"] = npy_ints([1, 2 ** 63], [2], "<u8")
    out["made-f2.npy"] = npy("<f2", [2], b"\x00\x3c\x00\x40")
    out["made-empty.npy"] = npy("<f8", [0, 5], b"")
    out["made-bool-bad.npy"] = npy("|b1", [3], b"\x00\x01\x02")
    out["made-dquote.npy"] = npy("<i4", [1], struct.pack("<i", 1)).replace(b"'descr'", b'"descr"')
    return out


def dataset_parts(meta, sets):
    """dataset.json + per set the five arrays, in fuzz_puzzle_dataset.cpp's order (sets "all", "b")."""
    parts = [json.dumps(meta).encode()]
    for arrays in sets:
        parts += arrays
    return joined(*parts)


def seeds_puzzle_dataset():
    out = {}
    meta = {"pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "vocab_size": 11, "seq_len": 4,
            "num_puzzle_identifiers": 3, "total_groups": 2, "mean_puzzle_examples": 1.5, "sets": ["all"]}
    inputs = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1, 2]
    labels = [0, 2, 3, 4, 5, 0, 7, 8, 9, 10, 1, 0]
    arrays = [npy_ints(inputs, [3, 4], "|u1"), npy_ints(labels, [3, 4], "|u1"), npy_ints([1, 2], [2], "<i4"),
              npy_ints([0, 2, 3], [3]), npy_ints([0, 1, 2], [3])]
    out["made-one-set"] = dataset_parts(meta, [arrays])
    meta2 = dict(meta, ignore_label_id=None, sets=["all", "b"], total_groups=3, vocab_size=300)
    arrays_b = [npy_ints([299, 1, 2, 3], [1, 4], "<i2"), npy_ints([299, -100 & 0xFFFF, 2, 3], [1, 4], "<u2"),
                npy_ints([2], [1], "<i8"), npy_ints([0, 1], [2]), npy_ints([0, 1], [2])]
    out["made-two-sets"] = dataset_parts(meta2, [arrays, arrays_b])
    ref = json.loads(read(os.path.join(FIX, "hrm-reference", "dataset.json")))
    n = 6
    grid = [(i * 7 + j) % 10 + 1 for i in range(n) for j in range(81)]
    ref_arrays = [npy_ints(grid, [n, 81], "|u1"), npy_ints(grid, [n, 81], "|u1"),
                  npy_ints(list(range(1, n + 1)), [n], "<i4"), npy_ints(list(range(n + 1)), [n + 1], "<i4"),
                  npy_ints(list(range(n + 1)), [n + 1], "<i4")]
    out["fixture-meta"] = dataset_parts(ref, [ref_arrays])
    return out


def seeds_peft_adapter():
    cfg = read(os.path.join(FIX, "peft-adapter", "adapter_config.json"))
    weights = read(os.path.join(FIX, "peft-adapter", "adapter_model.safetensors"))
    out = {"fixture": joined(cfg, weights)}
    # Older PEFT keeps the adapter name in the key ("lora_A.default.weight"): same data, renamed.
    (hlen,) = struct.unpack("<Q", weights[:8])
    header = json.loads(weights[8:8 + hlen])
    renamed = {(k.replace(".weight", ".default.weight") if "lora_" in k else k): v for k, v in header.items()}
    text = json.dumps(renamed).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    out["fixture-default-names"] = joined(cfg, struct.pack("<Q", len(text)) + text + weights[8 + hlen:])
    j = json.loads(cfg)
    j.update(target_modules="all-linear", lora_dropout=0.1, lora_alpha=4.5, use_dora=False, rank_pattern={})
    out["all-linear"] = joined(json.dumps(j), weights)
    return out


def seeds_clara_adapters():
    out = {os.path.relpath(p, FIX): read(p) for p in fixtures(r"adapters\.pth$") if os.path.getsize(p) <= MAX_SEED}
    # A complete adapter for the tiny Mistral (fuzz_model_config.h), r 4, one storage per tensor.
    torch, _ = _fake_torch()
    shapes = {"self_attn.q_proj": (64, 64), "self_attn.k_proj": (32, 64), "self_attn.v_proj": (32, 64),
              "self_attn.o_proj": (64, 64), "mlp.gate_proj": (176, 64), "mlp.up_proj": (176, 64), "mlp.down_proj": (64, 176)}
    state, storages = OrderedDict(), []
    for layer in range(2):
        for proj, (o, i) in shapes.items():
            for side, shape in (("lora_A", [4, i]), ("lora_B", [o, 4])):
                key = str(len(storages))
                numel = shape[0] * shape[1]
                storages.append((key, struct.pack("<f", 0.01) * numel))
                state[f"model.layers.{layer}.{proj}.{side}.weight"] = _Tensor(_Storage(torch.FloatStorage, key, numel), 0, shape,
                                                                              [shape[1], 1])
    buf = io.BytesIO()
    _Pickler(buf, protocol=2).dump({"decoder_adapter": state})
    out["made-decoder-adapter.pth"] = torch_zip(buf.getvalue(), storages)
    return out


OVERRIDES = "\n".join(["arch.hidden_size=64", "lr=0.01", "arch.loss.name=x", "extra.free.form=[1,2]", 'optional="s"',
                       "list=[3]", "generate.kind=maze", "epochs=2.5", "bad", "=1", "a..b=1", "seed=null"])


def seeds_json_config():
    out = {}
    for d in ("models/hrm", "models/clara", "models/llm"):
        for f in sorted(os.listdir(os.path.join(ROOT, d))):
            if f.endswith(".json"):
                out[f"{d.replace('/', '-')}-{f}"] = joined(read(os.path.join(ROOT, d, f)), OVERRIDES)
    for p in fixtures(r"\.json$"):
        if os.path.getsize(p) <= 16 << 10:
            out[os.path.relpath(p, FIX)] = joined(read(p), OVERRIDES)
    out["made-empty-object"] = joined("{}", OVERRIDES)
    return out


def seeds_yaml_config():
    out = {os.path.relpath(p, FIX): read(p) for p in fixtures(r"\.ya?ml$")}
    out["made-scalars.yaml"] = (b"a: 1\nb: -2.5e3\nc: .inf\nd: -.Inf\ne: ~\nf: 'quoted'\ng: \"1\"\nh: True\n"
                                b"i: [1, two, {x: y}]\nj: !!str 5\nk: 99999999999999999999\nl: .5\nm: |\n  block\n  text\n")
    out["made-anchors.yaml"] = b"base: &b {x: 1, y: [1, 2]}\nother:\n  <<: *b\n  z: *b\nlist:\n  - *b\n  - - nested\n"
    out["made-docs.yaml"] = b"%YAML 1.2\n---\na: 1\n...\n---\nb: 2\n"
    out["made-complex-key.yaml"] = b"? [a, b]\n: value\n? {k: v}\n: other\n"
    return out


def seeds_llm_config():
    out = {}
    for p in fixtures(r"config\.json$"):
        out[os.path.relpath(p, FIX)] = read(p)
    for f in sorted(os.listdir(os.path.join(ROOT, "models", "llm"))):
        out[f"models-llm-{f}"] = read(os.path.join(ROOT, "models", "llm", f))
    base = json.loads(read(os.path.join(FIX, "clara-reference", "config.json")))
    out["made-llama3.json"] = json.dumps(dict(base, model_type="llama", eos_token_id=[2, 3], head_dim=32,
                                              attention_bias=True, mlp_bias=True, rope_scaling={
                                                  "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})).encode()
    out["made-qwen2.json"] = json.dumps(dict(base, model_type="qwen2", use_sliding_window=False, tie_word_embeddings=True,
                                             rope_scaling={"type": "linear", "factor": 2}, dtype="float16")).encode()
    return out


def seeds_clara_config():
    out = {}
    ref = read(os.path.join(FIX, "clara-reference", "clara_config.json"))
    over = "lora_r=8\ntraining_stage=stage2\ncompr_rate=4\ndecoder_model_name=x\nlora_alpha=0"
    for p in fixtures(r"ckpt_stage\d/config\.json$"):
        out[os.path.relpath(p, FIX)] = joined(read(p), ABSENT, over)
        out[os.path.relpath(p, FIX) + "+ours"] = joined(read(p), ref, over)
    out["ours-only"] = joined(ABSENT, ref, over)
    out["mistral-config-and-ours"] = joined(read(os.path.join(FIX, "clara-reference", "config.json")), ref, "")
    return out


def seeds_clara_rows():
    out = {os.path.relpath(p, FIX): read(p) for p in fixtures(r"\.jsonl$")}
    rows = [
        {"question": "Q?", "docs": ["d1", "d2"], "answer": "A.", "pos_index": [1]},
        {"question": ["q1", "q2"], "answers": ["a1", "a2"], "docs": ["doc"], "data_type": "qa"},
        {"data_type": "paraphrase", "answers": ["p"], "docs": ["only doc"], "question": None},
        {"question": "Q", "context": ["c1", "c2"], "golden_answers": ["g"], "pos_index": []},
        {"question": "Q", "content": ["c"], "gold_answer": "g", "extra": {"ignored": True}},
        {"question": "Q <MEM0>", "docs": ["<SEP> d"], "answer": "a"},
        {"question": "\u00e9\u00e8 \u2028", "docs": ["\t"], "answer": " "},
    ]
    body = "\n".join(json.dumps(r) for r in rows)
    out["made-mixed.jsonl"] = ("\ufeff" + body + "\n").encode()
    out["made-crlf.jsonl"] = (body.replace("\n", "\r\n") + "\r\n\n   \n").encode()
    out["made-truncated.jsonl"] = (body + "\n" + json.dumps(rows[0])[:-5]).encode()
    out["made-bad-utf8.jsonl"] = b'{"question": "q\xff", "docs": ["d"], "answer": "a"}\n[1]\n"s"\n'
    return out


def seeds_llm_tokenizer():
    out = {}
    text = "Hello <s> world</s> <unk>\n\u00e9\u2581 [INST] x [/INST]  <MEM0><SEP>"
    for d in ("clara-train/ckpt_stage1", "clara-reference"):
        files = []
        for f in ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja"):
            p = os.path.join(FIX, d, f)
            files.append(read(p) if os.path.exists(p) else ABSENT)
        out[d.replace("/", "-")] = joined(*files, text)
    cfg = {"legacy": False, "add_eos_token": True, "bos_token": "<s>", "pad_token": {"__type": "AddedToken", "content": "<pad>",
                                                                                      "lstrip": True, "special": True},
           "additional_special_tokens": ["<x>", {"__type": "AddedToken", "content": "<y>", "rstrip": True}],
           "chat_template": [{"name": "default", "template": "{{ bos_token }}"}, {"name": "tool", "template": "t"}]}
    stm = {"eos_token": {"content": "</s>", "lstrip": False}, "additional_special_tokens": ["<z>"]}
    added = {"<x>": 640, "<new>": 641, "plain": 642}
    out["made-old-layout"] = joined(json.dumps(cfg), json.dumps(stm), json.dumps(added), ABSENT, text)
    out["made-no-config"] = joined(ABSENT, ABSENT, ABSENT, ABSENT, text)
    return out


def seeds_llm_tokenizer_text():
    out = {}
    cases = json.loads(read(os.path.join(FIX, "tokenizer-cases", "expected.json")))
    texts = set()

    def walk(v):
        if isinstance(v, dict):
            if isinstance(v.get("text"), str):
                texts.add(v["text"])
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(cases)
    for p in fixtures(r"\.jsonl$"):
        for line in read(p).decode().splitlines():
            row = json.loads(line)
            for k in ("docs", "question", "answers", "answer"):
                v = row.get(k)
                for t in v if isinstance(v, list) else [v]:
                    if isinstance(t, str):
                        texts.add(t)
    texts.update(["<MEM0><MEM1><MEM2><MEM3><SEP><ENC><AE>", "[L] a [R] b [LR] c norm  sp ace \u00e9t\u00e9",
                  "\u3000[L]\u00a0x\u2003[R]\u205f", "\xe2\x96\x81 raw ▁▁ <0x0A> <0xFF>", "\t\n\r\x0b\x0c"])
    for t in sorted(texts):
        out["t-" + hashlib.sha1(t.encode()).hexdigest()[:12]] = t.encode()
    out["bytes-invalid-utf8"] = b"\xff\xfe <s> \xc3\x28 \xe2\x82 </s>\x00"
    return out


# ---- dictionaries ------------------------------------------------------------------------------
JSON_TOKENS = ['2147483647', '"2147483647"', '4294967296', '{', '}', '[', ']', ':', ',', '"', 'true', 'false', 'null', '-1', '0', '1e400', '-0.0', '1.5',
               '18446744073709551616', '9223372036854775807', '-9223372036854775808', '"\\u0000"', '"\\ud800"', '""']
YAML_TOKENS = ['---', '...', '- ', ': ', '? ', '&a ', '*a', '<<: ', '!!str ', '!!int ', '!!map', '!', '|', '>', '~', '.inf',
               '.nan', '{', '}', '[', ']', '%YAML 1.2', '%TAG ! tag:x:', '#', "'", '"', 'true', 'null', '\t']
PICKLE_TOKENS = ["torch._utils\n_rebuild_tensor_v2\n", "torch._utils\n_rebuild_parameter\n", "torch\nFloatStorage\n",
                 "torch\nLongStorage\n", "torch\nBFloat16Storage\n", "torch\nUntypedStorage\n", "collections\nOrderedDict\n",
                 "builtins\ndict\n", "torch\nSize\n", "torch.jit._pickle\nrestore_type_tag\n", "storage", "cpu", "cuda:0",
                 "\x80\x02", "\x80\x05", "\x95", "\x8c\x05torch", "\x8a\x08", "\x8b", "J\xff\xff\xff\x7f"]
SAFETENSORS_TOKENS = ['"dtype"', '"shape"', '"data_offsets"', '"__metadata__"', '"F32"', '"F64"', '"BF16"', '"F16"', '"I64"',
                      '"I32"', '"I16"', '"I8"', '"U8"', '"BOOL"', '"F8_E4M3"', '"F8_E5M2"', '"C64"', '"weight_map"',
                      '"metadata"']
NPY_TOKENS = ["\x93NUMPY", "\x01\x00", "\x02\x00", "\x03\x00", "'descr'", "'fortran_order'", "'shape'", "True", "False",
              "'<f4'", "'<i8'", "'|u1'", "'|b1'", "'>i4'", "'<c8'", "'<U3'", "'|O'", "L", "()", "(0,)"]


def json_keys(blobs):
    keys = set()

    def walk(v):
        if isinstance(v, dict):
            for k, x in v.items():
                keys.add(k)
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    for b in blobs:
        for part in b.split(SEP):
            for chunk in [part] + part.split(b"\n"):
                try:
                    walk(json.loads(chunk))
                except (ValueError, UnicodeDecodeError, RecursionError):
                    pass
    return sorted('"%s"' % k for k in keys if len(k) < 64)


DICTS = {
    "torch_save": PICKLE_TOKENS + ["archive/data.pkl", "archive/byteorder", "PK\x03\x04", "PK\x01\x02", "PK\x05\x06", "little", "big"],
    "torch_pickle": PICKLE_TOKENS,
    "safetensors": SAFETENSORS_TOKENS + JSON_TOKENS,
    "safetensors_index": SAFETENSORS_TOKENS + JSON_TOKENS + ['"tiny.safetensors"', '"garbage.safetensors"', '"empty.safetensors"',
                                                             '"folder.safetensors"', '".."', '"."', '"/etc/passwd"', '"a"', '"b"'],
    "npy": NPY_TOKENS,
    "puzzle_dataset": JSON_TOKENS + NPY_TOKENS + [SEP.decode()],
    "peft_adapter": JSON_TOKENS + SAFETENSORS_TOKENS + [SEP.decode(), '"base_model.model."', '"lora_A"', '"lora_B"',
                                                        '".weight"', '"all-linear"', '"LORA"'],
    "clara_adapters": PICKLE_TOKENS + ["model.layers.0.self_attn.q_proj.lora_A.weight", "model.embed_tokens.weight",
                                       "lm_head.weight", "decoder_adapter", "encoder_adapter", "query_reasoner_adapter"],
    "json_config": JSON_TOKENS + [SEP.decode(), "=", ".", "\n"],
    "yaml_config": YAML_TOKENS,
    "llm_config": JSON_TOKENS + ['"mistral"', '"llama"', '"qwen2"', '"llama3"', '"linear"', '"default"', '"silu"'],
    "clara_config": JSON_TOKENS + [SEP.decode(), ABSENT.decode(), '"CLaRa"', '"stage1"', '"stage1_2"', '"stage2"', "="],
    "clara_rows": JSON_TOKENS + ['"qa"', '"paraphrase"', "<MEM0>", "<MEM12>", "<SEP>", "<ENC>", "<AE>", "\xef\xbb\xbf", "\r\n"],
    "llm_tokenizer": JSON_TOKENS + [SEP.decode(), ABSENT.decode(), '"AddedToken"', '"__type"', '"content"', "<s>", "</s>",
                                    "<unk>", "[INST]", "[/INST]", "{{ bos_token }}", "\u2581", "<0x0A>"],
    "llm_tokenizer_text": ["<s>", "</s>", "<unk>", "<MEM0>", "<MEM3>", "<SEP>", "<ENC>", "<AE>", "[L]", "[R]", "[LR]", "norm",
                           " sp ace", "\u00e9t\u00e9", "\u2581", "\u3000", "\u00a0", "\u2028", "<0x0A>", "\xef\xbf\xbd"],
}

SEEDS = {
    "torch_save": seeds_torch_save, "torch_pickle": seeds_torch_pickle, "safetensors": seeds_safetensors,
    "safetensors_index": seeds_safetensors_index, "npy": seeds_npy, "puzzle_dataset": seeds_puzzle_dataset,
    "peft_adapter": seeds_peft_adapter, "clara_adapters": seeds_clara_adapters, "json_config": seeds_json_config,
    "yaml_config": seeds_yaml_config, "llm_config": seeds_llm_config, "clara_config": seeds_clara_config,
    "clara_rows": seeds_clara_rows, "llm_tokenizer": seeds_llm_tokenizer, "llm_tokenizer_text": seeds_llm_tokenizer_text,
}
JSON_TARGETS = {"json_config", "llm_config", "clara_config", "clara_rows", "llm_tokenizer", "safetensors_index", "peft_adapter",
                "puzzle_dataset"}


def dict_entry(token):
    raw = token.encode("utf-8") if isinstance(token, str) else token
    esc = "".join(chr(c) if 0x20 <= c < 0x7F and c not in (0x22, 0x5C) else "\\x%02X" % c for c in raw)
    return f'"{esc}"'


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    out_dir, targets = argv[1], argv[2:] or sorted(SEEDS)
    for t in targets:
        if t not in SEEDS:
            sys.exit(f"seeds.py: no seeds for target '{t}' (known: {', '.join(sorted(SEEDS))})")
        seeds = SEEDS[t]()
        sdir = os.path.join(out_dir, "seeds", t)
        shutil.rmtree(sdir, ignore_errors=True)
        os.makedirs(sdir)
        for name, data in sorted(seeds.items()):
            safe = re.sub(r"[^A-Za-z0-9._+-]", "_", name)
            with open(os.path.join(sdir, safe), "wb") as f:
                f.write(data)
        tokens = list(DICTS.get(t, []))
        if t in JSON_TARGETS:
            tokens += json_keys(seeds.values())
        os.makedirs(os.path.join(out_dir, "dict"), exist_ok=True)
        with open(os.path.join(out_dir, "dict", t + ".dict"), "w") as f:
            for tok in dict.fromkeys(tokens):
                f.write(dict_entry(tok) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
