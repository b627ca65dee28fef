#!/usr/bin/env python3
"""Loads a splitnet checkpoint into PyTorch and runs the network.

    torch_load_checkpoint.py RUN_DIR INPUT.safetensors

RUN_DIR is a run directory of `splitnet train`: its checkpoint.manifest.json
names the current checkpoint's tensor file and state file, with their
SHA-256 (an older run directory has checkpoint.safetensors and
checkpoint.json instead). INPUT.safetensors holds one float32 tensor "x"
[B, H, W, C] (NHWC, already normalized). Prints {"logits": [[...], ...]}
as JSON.

The checkpoint is a PyTorch state_dict: conv weights [out, in, kh, kw], dense
weights [out, in], fc6's inputs in the order torch.flatten gives an NCHW map
(towers' channels concatenated, tower 0 first). SGD momentum buffers are the
tensors named "momentum.<parameter>".
"""
import hashlib
import json
import os
import struct
import sys

import torch
from torch import nn


def load_safetensors(path):
    try:
        from safetensors.torch import load_file  # the library, where installed
        return load_file(path)
    except ImportError:
        pass
    # The format is an 8-byte little-endian header length, a JSON header, raw data.
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        assert e["dtype"] == "F32", f"{path}: {name} is {e['dtype']}, expected F32"
        begin, end = e["data_offsets"]
        buf = bytearray(raw[8 + n + begin:8 + n + end])
        out[name] = torch.frombuffer(buf, dtype=torch.float32).reshape(e["shape"]).clone()
    return out


def checkpoint_files(run_dir):
    """The committed checkpoint's (state, tensors) paths, each checked against the manifest."""
    manifest_path = os.path.join(run_dir, "checkpoint.manifest.json")
    if not os.path.exists(manifest_path):
        # the format before manifests: fixed names
        return os.path.join(run_dir, "checkpoint.json"), os.path.join(run_dir, "checkpoint.safetensors")
    with open(manifest_path) as f:
        manifest = json.load(f)
    paths = []
    for key in ("state", "tensors"):
        entry = manifest[key]
        path = os.path.join(run_dir, os.path.basename(entry["file"]))
        sha = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 23), b""):
                sha.update(block)
        digest = sha.hexdigest()
        if digest != entry["sha256"]:
            sys.exit(f"{path}: SHA-256 {digest[:16]}..., {manifest_path} names it with {entry['sha256'][:16]}...")
        paths.append(path)
    return tuple(paths)


class AlexNet(nn.Module):
    """Both of splitnet's networks from its config: towers as ModuleDicts."""

    def __init__(self, cfg):
        super().__init__()
        self.arch = cfg["arch"]
        width = cfg["width"]
        w = lambda n: max(1, round(n * width))
        original = self.arch == "original"
        self.towers = 2 if original else 1
        c = cfg["channels"]
        if original:
            plan = [("conv1", w(48), 11, 4, 0, "local"), ("conv2", w(128), 5, 1, 2, "local"),
                    ("conv3", w(192), 3, 1, 1, "cross"), ("conv4", w(192), 3, 1, 1, "local"),
                    ("conv5", w(128), 3, 1, 1, "local")]
            fcs = [("fc6", w(2048)), ("fc7", w(2048)), ("fc8", 10 // 2)]
        else:
            plan = [("conv1", w(96), 11, 4, 1, "local"), ("conv2", w(256), 5, 1, 2, "local"),
                    ("conv3", w(384), 3, 1, 1, "local"), ("conv4", w(384), 3, 1, 1, "local"),
                    ("conv5", w(256), 3, 1, 1, "local")]
            fcs = [("fc6", w(4096)), ("fc7", w(4096)), ("fc8", 10)]
        self.plan = plan
        # PyTorch's LRN divides alpha by n: the paper's alpha 1e-4 is 5e-4 here.
        self.lrn = nn.LocalResponseNorm(size=5, alpha=5 * 1e-4, beta=0.75, k=2.0)
        prev = c
        first = True
        for name, out, k, s, p, link in plan:
            cin = prev if first or link == "local" else prev * self.towers
            self.add_module(name, self._towered(lambda: nn.Conv2d(cin, out, k, stride=s, padding=p)))
            prev, first = out, False
        with torch.no_grad():
            flat = self._features(torch.zeros(1, c, cfg["resolution"], cfg["resolution"])).shape[1]
        fin = flat
        for name, out in fcs:
            self.add_module(name, self._towered(lambda: nn.Linear(fin, out)))
            fin = out * self.towers

    def _towered(self, make):
        if self.towers == 1:
            return make()
        return nn.ModuleDict({f"t{t}": make() for t in range(self.towers)})

    def _apply(self, name, xs, cross):
        mod = getattr(self, name)
        if self.towers == 1:
            return [mod(xs[0])]
        inp = [torch.cat(xs, 1)] * self.towers if cross else xs
        return [mod[f"t{t}"](inp[t]) for t in range(self.towers)]

    def _features(self, x):
        xs = [x] * self.towers
        for name, _, _, _, _, link in self.plan:
            xs = [torch.relu(t) for t in self._apply(name, xs, link == "cross" and name != "conv1")]
            if self.arch == "original" and name in ("conv1", "conv2"):
                xs = [self.lrn(t) for t in xs]
            if name in ("conv1", "conv2", "conv5"):
                xs = [nn.functional.max_pool2d(t, 3, 2) for t in xs]
        return torch.flatten(torch.cat(xs, 1), 1)

    def forward(self, x):
        h = self._features(x)
        for name, relu in (("fc6", True), ("fc7", True), ("fc8", False)):
            # every fully connected layer reads all towers (the 2012 net's cross links)
            outs = self._apply(name, [h], cross=True)
            h = torch.cat([torch.relu(t) if relu else t for t in outs], 1)
        return h


def main():
    run_dir, input_path = sys.argv[1], sys.argv[2]
    state_path, tensors_path = checkpoint_files(run_dir)
    with open(state_path) as f:
        state = json.load(f)
    tensors = load_safetensors(tensors_path)
    params = {k: v for k, v in tensors.items() if not k.startswith("momentum.")}
    net = AlexNet(state["config"])
    net.load_state_dict(params, strict=True)
    net.eval()
    x = load_safetensors(input_path)["x"].permute(0, 3, 1, 2)  # NHWC -> NCHW
    with torch.no_grad():
        logits = net(x)
    print(json.dumps({"logits": logits.tolist()}))


if __name__ == "__main__":
    main()
