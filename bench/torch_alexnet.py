#!/usr/bin/env python3
"""The reference point for `npm run bench -- compute` and the GPU check: one
SGD training step of d2l's AlexNet in PyTorch, same layers, input and batch as
splitnet's benchmark, on the CPU or a CUDA GPU (cuDNN, autotuned). Prints one
JSON object on stdout.

Usage: torch_alexnet.py --resolution 96 --width 1 --batch 32 --threads 1 --steps 8 --warmup 2 [--device cuda]
"""
import argparse
import json
import statistics
import sys
import time

try:
    import torch
    from torch import nn
except ImportError as e:  # the caller reports this and skips the comparison
    print(json.dumps({"error": f"torch not importable: {e}"}))
    sys.exit(3)


def d2l_alexnet(width: float, channels: int, classes: int, resolution: int) -> nn.Module:
    w = lambda n: max(1, round(n * width))
    features = nn.Sequential(
        nn.Conv2d(channels, w(96), kernel_size=11, stride=4, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(w(96), w(256), kernel_size=5, padding=2), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(w(256), w(384), kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(w(384), w(384), kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(w(384), w(256), kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Flatten(),
    )
    with torch.no_grad():
        flat = features(torch.zeros(1, channels, resolution, resolution)).shape[1]
    return nn.Sequential(
        features,
        nn.Linear(flat, w(4096)), nn.ReLU(), nn.Dropout(p=0.5),
        nn.Linear(w(4096), w(4096)), nn.ReLU(), nn.Dropout(p=0.5),
        nn.Linear(w(4096), classes),
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--resolution", type=int, default=96)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--strict-fp32", action="store_true",
                   help="no TF32 tensor-core math in convolutions (PyTorch's default allows it): float32 throughout, as WebGPU computes")
    a = p.parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"error": "torch.cuda.is_available() is False"}))
        sys.exit(3)
    dev = torch.device(a.device)
    # cuDNN picks the fastest algorithm per layer shape: the fair reference.
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = not a.strict_fp32
    torch.backends.cuda.matmul.allow_tf32 = False  # PyTorch's default since 1.12

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    net = d2l_alexnet(a.width, a.channels, a.classes, a.resolution).to(dev)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.rand(a.batch, a.channels, a.resolution, a.resolution, device=dev)
    y = torch.randint(0, a.classes, (a.batch,), device=dev)

    times = []
    for i in range(a.warmup + a.steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        float(loss)  # waits for the step to finish, on a GPU too
        dt = time.perf_counter() - t0
        if i >= a.warmup:
            times.append(dt)
    median = statistics.median(times)
    print(json.dumps({
        "framework": f"pytorch {torch.__version__}",
        "device": torch.cuda.get_device_name(dev) if a.device == "cuda" else "cpu",
        "convTf32": torch.backends.cudnn.allow_tf32 if a.device == "cuda" else False,
        "threads": torch.get_num_threads(),
        "batch": a.batch,
        "resolution": a.resolution,
        "width": a.width,
        "stepMs": [round(t * 1000, 1) for t in times],
        "medianStepMs": round(median * 1000, 1),
        "imagesPerSec": round(a.batch / median, 2),
        "params": sum(t.numel() for t in net.parameters()),
    }))


if __name__ == "__main__":
    main()
