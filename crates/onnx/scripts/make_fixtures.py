#!/usr/bin/env python3
"""Builds the PyTorch reference models of convkit-onnx's tests and exports them to ONNX.

Run from anywhere with a Python that has torch, onnx, numpy and safetensors:

    python crates/onnx/scripts/make_fixtures.py

Writes into crates/onnx/tests/fixtures/:
  lenet5.onnx              LeNet-5 (ReLU, average pooling) with the trained Fashion-MNIST
                           weights of lenet_fashion_torch.safetensors
  lenet5_io.safetensors    `input` [8, 1, 32, 32] (first 8 test images) and PyTorch's `logits`
  convbn.onnx              seeded conv-BN-ReLU net, batch norm kept as BatchNormalization
  convbn_fused.onnx        the same net with batch norm folded into the convolutions (the
                           exporter's default in eval mode)
  convbn_state.safetensors its state_dict (weights and running statistics)
  convbn_io.safetensors    `input` [4, 3, 16, 16] and `logits`
  resnet_tiny.onnx         seeded residual net (identity and 1x1-downsample shortcuts), folded
  resnet_tiny_io.safetensors

Every model is exported with the TorchScript exporter (dynamo=False), opset 17, dynamic batch.
"""

import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.numpy import save_file
from safetensors.torch import load_file

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures")
OPSET = 17


class LeNet5(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.avg_pool2d(F.relu(self.conv1(x)), 2, 2)
        x = F.avg_pool2d(F.relu(self.conv2(x)), 2, 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def conv_bn_net():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 5),
    )


class Block(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        s = x if self.downsample is None else self.downsample(x)
        return F.relu(y + s)


class ResNetTiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = Block(8, 8, 1)
        self.layer2 = Block(8, 16, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def warm_up_batch_norm(model, shape, seed):
    """A few train-mode batches so the running statistics are not the initial 0 / 1."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(shape, generator=g) * 2.0 + 0.5)
    model.eval()


def export(model, x, name, **kw):
    path = os.path.join(FIXTURES, name)
    torch.onnx.export(
        model,
        (x,),
        path,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=OPSET,
        dynamo=False,
        **kw,
    )
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def save_io(name, x, y):
    path = os.path.join(FIXTURES, name)
    save_file({"input": x.numpy().copy(), "logits": y.numpy().copy()}, path)
    print(f"wrote {path}")


def main():
    os.makedirs(FIXTURES, exist_ok=True)
    torch.manual_seed(0)

    # (a) LeNet-5 with the trained weights.
    lenet = LeNet5()
    lenet.load_state_dict(load_file(os.path.join(FIXTURES, "lenet_fashion_torch.safetensors")))
    lenet.eval()
    io100 = load_file(os.path.join(FIXTURES, "..", "..", "..", "models", "tests", "fixtures",
                                   "lenet_fashion_torch_io100.safetensors"))
    x = io100["inputs"][:8].contiguous()
    with torch.no_grad():
        y = lenet(x)
    gap = (y - io100["logits"][:8]).abs().max().item()
    print(f"lenet5: max |logits - stored io100 logits| = {gap:.3g}")
    export(lenet, x, "lenet5.onnx")
    save_io("lenet5_io.safetensors", x, y)

    # (b) conv-BN-ReLU net, seeded, with real running statistics.
    torch.manual_seed(1)
    net = conv_bn_net()
    warm_up_batch_norm(net, (16, 3, 16, 16), seed=2)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = net(x)
    state = {k: v.numpy().copy() for k, v in net.state_dict().items() if v.dtype == torch.float32}
    save_file(state, os.path.join(FIXTURES, "convbn_state.safetensors"))
    export(net, x, "convbn.onnx", training=torch.onnx.TrainingMode.PRESERVE,
           do_constant_folding=False)
    export(net, x, "convbn_fused.onnx")
    save_io("convbn_io.safetensors", x, y)

    # A residual net (folded batch norm: Conv, Add, Relu, GlobalAveragePool, Gemm).
    torch.manual_seed(4)
    res = ResNetTiny()
    warm_up_batch_norm(res, (16, 3, 12, 12), seed=5)
    x = torch.randn(3, 3, 12, 12, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        y = res(x)
    export(res, x, "resnet_tiny.onnx")
    save_io("resnet_tiny_io.safetensors", x, y)

    import onnx

    for name in ["lenet5.onnx", "convbn.onnx", "convbn_fused.onnx", "resnet_tiny.onnx"]:
        m = onnx.load(os.path.join(FIXTURES, name))
        onnx.checker.check_model(m)
        ops = [n.op_type for n in m.graph.node]
        print(f"{name}: {ops}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
