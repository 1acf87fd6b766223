"""Writing fixture files for the C tests, and perturbing a model's norms, shared by
the make_*_fixtures.py scripts.

safetensors is written by hand (8-byte little-endian header length, JSON
header, raw little-endian data) so no safetensors package is needed; wider
elements first, then by name, so every tensor is aligned to its element size.
"""
import json
import struct

import torch

KINDS = {torch.float64: ("F64", "<f8"), torch.float32: ("F32", "<f4"), torch.int32: ("I32", "<i4"),
         torch.uint8: ("U8", "|u1")}


def write_safetensors(path, tensors, meta):
    names = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header, blobs, offset = {}, [], 0
    for name in names:
        t = tensors[name]
        dtype, np_dtype = KINDS[t.dtype]
        blob = t.numpy().astype(np_dtype).tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    header["__metadata__"] = {k: repr(v) if isinstance(v, float) else str(v) for k, v in meta.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def perturb_norms(model):
    """Norm weights away from 1 and biases away from 0, so that using them matters."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith(".weight"):
                p.add_(0.3 * torch.randn_like(p))
            elif "norm" in name and name.endswith(".bias"):
                p.copy_(0.3 * torch.randn_like(p))
