#!/usr/bin/env python3
"""PyTorch twins of convkit's model zoo (`convkit_models::zoo`), and the fixtures that check them.

    python zoo_twin.py OUT_DIR           write the fixtures
    python zoo_twin.py --serve THREADS   time the twins for `benches/zoo.rs`

With `--serve`, it sets PyTorch's threads, prints `ready <torch version>` and answers each
request line `train|infer MODEL BATCH CALLS WARM_MS` with the fastest of CALLS timed calls in
milliseconds, after WARM_MS of untimed calls: `train` is one Adam step at the batch (forward,
cross-entropy, backward, update), `infer` an evaluation-mode forward under `no_grad`. Besides the
zoo's models, `MODEL` may be `lenet5` (LeNet-5 on [1, 32, 32], trained with SGD and momentum
0.9), the twin of `benches/lenet.rs`'s interleaved comparison.

For each model (vgg-small on [1, 28, 28], resnet-small on [1, 28, 28], 10 classes) it builds the
twin with seeded weights, runs a few training-mode batches so that the batch norms' running
statistics are not their initial values, switches to evaluation mode and writes
`OUT_DIR/<model>_state.safetensors` (the `state_dict`, without `num_batches_tracked`, which
convkit does not keep) and `OUT_DIR/<model>_io.safetensors` (`inputs [8, 1, 28, 28]` and the
twin's `logits [8, 10]`). The test `crates/models/tests/zoo_twin.rs` loads the state into the
convkit model, strictly, and compares logits.

The twins are written so that their `state_dict` names are convkit's: `nn.Sequential` numbers
children as convkit's `Sequential::push` does, and `Residual` has convkit's `body` and
`shortcut`.
"""
import sys
from collections import OrderedDict
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn


class Residual(nn.Module):
    """y = body(x) + shortcut(x), the shortcut being the identity when None (convkit's Residual)."""

    def __init__(self, body, shortcut=None):
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x):
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))


def conv3x3(c_in, c_out, stride=1):
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class VggSmall(nn.Module):
    def __init__(self, c=1, h=28, w=28, classes=10):
        super().__init__()
        layers, c_in = [], c
        for c_out in (32, 64):
            for _ in range(2):
                layers += [conv3x3(c_in, c_out), nn.BatchNorm2d(c_out), nn.ReLU()]
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            nn.Linear(64 * (h // 4) * (w // 4), 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, classes)
        )

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


def basic_block(c_in, c_out, stride):
    body = nn.Sequential(OrderedDict(
        conv1=conv3x3(c_in, c_out, stride), bn1=nn.BatchNorm2d(c_out), relu=nn.ReLU(),
        conv2=conv3x3(c_out, c_out), bn2=nn.BatchNorm2d(c_out),
    ))
    shortcut = None
    if stride != 1 or c_in != c_out:
        shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
    return nn.Sequential(OrderedDict(residual=Residual(body, shortcut), relu=nn.ReLU()))


class ResnetSmall(nn.Module):
    def __init__(self, c=1, classes=10):
        super().__init__()
        self.stem = nn.Sequential(conv3x3(c, 16), nn.BatchNorm2d(16), nn.ReLU())
        c_in = 16
        for i, c_out in enumerate((16, 32, 64)):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", nn.Sequential(basic_block(c_in, c_out, stride), basic_block(c_out, c_out, 1)))
            c_in = c_out
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(self.flatten(self.pool(x)))


class LeNet5(nn.Module):
    """LeNet-5 as `convkit_models::LeNet5` builds it (timing twin only: `--serve`'s `lenet5`)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5), nn.ReLU(), nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
            nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))

    def forward(self, x):
        return self.features(x)


def main(out_dir):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, make in (("vgg-small", VggSmall), ("resnet-small", ResnetSmall)):
        torch.manual_seed(0)
        model = make()
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(16, 1, 28, 28) * 0.8 + 0.3)
        model.eval()
        # Logits of a few units rather than hundredths, so that a 1e-5 comparison means something.
        with torch.no_grad():
            last = model.classifier[3] if name == "vgg-small" else model.fc
            last.weight.mul_(25.0)
        inputs = torch.randn(8, 1, 28, 28)
        with torch.no_grad():
            logits = model(inputs)
        state = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
        save_file(state, str(out / f"{name}_state.safetensors"))
        save_file({"inputs": inputs.contiguous(), "logits": logits.contiguous()}, str(out / f"{name}_io.safetensors"))
        print(f"{name}: {sum(v.numel() for k, v in state.items() if 'running' not in k)} parameters, "
              f"logits max |{logits.abs().max().item():.4f}|")


def serve(threads):
    import time

    import torch.nn.functional as F

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    makers = {"vgg-small": VggSmall, "resnet-small": ResnetSmall, "lenet5": LeNet5}
    # LeNet-5 reads 32x32 images and trains with SGD and momentum, as convkit's reference
    # recipe; the zoo's networks read 28x28 and train with Adam.
    sizes = {"lenet5": 32}
    cache = {}
    print("ready", torch.__version__, flush=True)
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        try:
            op, name = parts[0], parts[1]
            batch, calls, warm_ms = map(int, parts[2:])
            if name not in cache:
                torch.manual_seed(0)
                model = makers[name]()
                if name == "lenet5":
                    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
                else:
                    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
                cache[name] = (model, opt)
            model, opt = cache[name]
            size = sizes.get(name, 28)
            x = torch.randn(batch, 1, size, size)
            y = torch.randint(0, 10, (batch,))
            if op == "train":
                model.train()

                def call():
                    t0 = time.perf_counter()
                    opt.zero_grad()
                    F.cross_entropy(model(x), y).backward()
                    opt.step()
                    return time.perf_counter() - t0
            elif op == "infer":
                model.eval()

                def call():
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        model(x)
                    return time.perf_counter() - t0
            else:
                raise ValueError(f"unknown op {op}")
            start, warm = time.perf_counter(), 0
            while warm < 2 or time.perf_counter() - start < warm_ms / 1e3:
                call()
                warm += 1
            print(f"{min(call() for _ in range(calls)) * 1e3:.6f}", flush=True)
        except Exception as e:  # noqa: BLE001 - reported to the bench
            print("error", str(e).replace("\n", " "), flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--serve":
        serve(int(sys.argv[2]))
    else:
        main(sys.argv[1] if len(sys.argv) > 1 else "crates/models/tests/fixtures")
