"""Writes tests/fixtures/io: files in the formats hrmclara must read, made by the real
producers (torch.save, torch.jit.save, safetensors, numpy), plus what torch.load / numpy read
back from them (expected.safetensors, listings.json). Run with the set-up's Python:
    /opt/hrmclara/venv/bin/python tests/scripts/make_io_fixtures.py
"""
import collections
import json
import os

import numpy as np
import torch
import torch.serialization
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "io")
os.makedirs(OUT, exist_ok=True)
torch.manual_seed(0)
expected = {}
listings = {}


def flatten(obj, prefix=""):
    """The flattening hrmclara documents: dict keys and list/tuple indices joined with '.'."""
    out = []
    if isinstance(obj, torch.Tensor):
        out.append((prefix or "tensor", obj))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out += flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out += flatten(v, f"{prefix}.{i}" if prefix else str(i))
    return out


def record(name, path):
    loaded = torch.load(path, map_location="cpu", weights_only=False)
    flat = flatten(loaded)
    listings[name] = [[k, str(t.dtype).replace("torch.", ""), list(t.shape)] for k, t in flat]
    for k, t in flat:
        expected[f"{name}/{k}"] = t.detach().clone().contiguous()


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(5, 4)
        self.block = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
        self.register_buffer("steps", torch.tensor([7], dtype=torch.int64))


def save(name, obj, **kw):
    path = os.path.join(OUT, name)
    torch.save(obj, path, **kw)
    return path


# An OrderedDict state dict with _metadata, as upstream checkpoints are.
record("state_dict.pt", save("state_dict.pt", Tiny().state_dict()))
# A dict with exactly one key (torch::pickle_load fails on those).
record("single_key.pt", save("single_key.pt", {"only": torch.randn(2, 3)}))
# Nested containers and non-tensor leaves.
nested = {
    "a": {"b": {"c": torch.randn(3)}},
    "list": [torch.arange(4), torch.ones(2, 2)],
    "tuple": (torch.zeros(1),),
    "int_key": {0: torch.tensor([1.5]), 1: torch.tensor([2.5])},
    "number": 3, "text": "hello", "none": None, "flag": True, "real": 0.25,
}
record("nested.pt", save("nested.pt", nested))
# Every dtype ckpt_inspect names.
dtypes = collections.OrderedDict()
for dt in [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64, torch.int32,
           torch.int16, torch.int8, torch.uint8, torch.bool]:
    name = str(dt).replace("torch.", "")
    if dt.is_floating_point:
        dtypes[name] = (torch.randn(2, 3) * 10).to(dt)
    elif dt == torch.bool:
        dtypes[name] = torch.tensor([[True, False, True], [False, False, True]])
    else:
        info = torch.iinfo(dt)
        dtypes[name] = torch.tensor([[info.min, -1 if info.min < 0 else 0, 0], [1, 2, info.max]], dtype=dt)
dtypes["scalar"] = torch.tensor(3.25)
record("dtypes.pt", save("dtypes.pt", dtypes))
# Views sharing one storage with offsets and strides.
base = torch.arange(24, dtype=torch.float32)
views = {"base": base, "slice": base[4:16].view(3, 4), "strided": base.view(4, 6)[:, 1::2],
         "transposed": base.view(4, 6).t(), "empty": base[5:5]}
record("views.pt", save("views.pt", views))
# Tensors saved from CUDA: same bytes, location tag "cuda:0" (made without a GPU by patching the tag).
real_tag = torch.serialization.location_tag
torch.serialization.location_tag = lambda storage: "cuda:0"
try:
    save("cuda_saved.pt", {"w": torch.randn(2, 2), "b": torch.randn(2)})
finally:
    torch.serialization.location_tag = real_tag
with open(os.path.join(OUT, "cuda_saved.pt"), "rb") as f:
    assert b"cuda:0" in f.read()
record("cuda_saved.pt", os.path.join(OUT, "cuda_saved.pt"))
# The legacy (pre-zip) format: must be refused with a clear error.
save("legacy.pt", {"x": torch.ones(2)}, _use_new_zipfile_serialization=False)

# A TorchScript archive from Python.
scripted = torch.jit.script(Tiny())
torch.jit.save(scripted, os.path.join(OUT, "scripted.pt"))
listings["scripted.pt"] = [[k, str(t.dtype).replace("torch.", ""), list(t.shape)]
                           for k, t in list(scripted.named_parameters()) + list(scripted.named_buffers())]
for k, t in list(scripted.named_parameters()) + list(scripted.named_buffers()):
    expected[f"scripted.pt/{k}"] = t.detach().clone()

# safetensors written by the safetensors package, every dtype it shares with us.
st = {k: v.contiguous() for k, v in dtypes.items()}
save_file(st, os.path.join(OUT, "dtypes.safetensors"), metadata={"format": "pt", "who": "fixture"})

# .npy files as numpy writes them, and ones hrmclara must refuse.
rng = np.random.default_rng(0)
arrays = {
    "u8.npy": rng.integers(0, 255, size=(3, 5), dtype=np.uint8),
    "i32.npy": rng.integers(-1000, 1000, size=(4,), dtype=np.int32),
    "i64.npy": rng.integers(-2**40, 2**40, size=(2, 3), dtype=np.int64),
    "bool.npy": rng.integers(0, 2, size=(2, 2)).astype(np.bool_),
    "f32.npy": rng.standard_normal((2, 3, 2)).astype(np.float32),
    "scalar.npy": np.array(7, dtype=np.int64),
}
for name, arr in arrays.items():
    np.save(os.path.join(OUT, name), arr)
    expected[f"npy/{name}"] = torch.from_numpy(arr.copy())  # copy() keeps 0-d arrays 0-d
np.save(os.path.join(OUT, "fortran.npy"), np.asfortranarray(rng.standard_normal((3, 4)).astype(np.float32)))
np.save(os.path.join(OUT, "bigendian.npy"), np.arange(4, dtype=">i4"))
np.save(os.path.join(OUT, "complex.npy"), np.ones(3, dtype=np.complex64))

# What torch.load / safetensors list for the shared upstream fixtures (ckpt_inspect's contract).
FIX = os.path.join(os.path.dirname(__file__), "..", "fixtures")
sd = torch.load(os.path.join(FIX, "hrm-reference", "step_0"), map_location="cpu", weights_only=True)
listings["step_0"] = [[k, str(t.dtype).replace("torch.", ""), list(t.shape)] for k, t in sd.items()]
from safetensors import safe_open
with open(os.path.join(FIX, "clara-reference", "model.safetensors.index.json")) as f:
    weight_map = json.load(f)["weight_map"]
clara = []
for name, shard in weight_map.items():
    with safe_open(os.path.join(FIX, "clara-reference", shard), "pt") as f:
        t = f.get_tensor(name)
    clara.append([name, str(t.dtype).replace("torch.", ""), list(t.shape)])
listings["clara-sharded"] = clara

save_file(expected, os.path.join(OUT, "expected.safetensors"))
with open(os.path.join(OUT, "listings.json"), "w") as f:
    json.dump(listings, f, indent=1)
print("wrote", len(expected), "expected tensors to", OUT)
