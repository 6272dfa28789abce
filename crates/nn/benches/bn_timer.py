#!/usr/bin/env python3
"""PyTorch's side of `benches/batchnorm.rs`: times `torch.nn.BatchNorm2d` on request.

Started as `python bn_timer.py THREADS`; sets PyTorch's intra-op threads to THREADS, prints
`ready <torch version>`, then answers each request line on stdin with one line on stdout:

    train|eval N C H W CALLS WARM_MS  -> <minimum over CALLS timed calls, in milliseconds>

`train` times one training-mode forward (batch statistics, running averages updated) and its
backward `y.backward(dy)` (gradients of the input, weight and bias) together; `eval` times an
evaluation-mode forward under `torch.no_grad()`. Each request first runs the operation untimed
for at least WARM_MS milliseconds (and twice), then answers the fastest of CALLS timed calls.
"""
import sys
import time

import torch


def main():
    torch.set_num_threads(int(sys.argv[1]))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(0)
    cache = {}
    print("ready", torch.__version__, flush=True)
    for line in sys.stdin:
        parts = line.split()
        if not parts:
            continue
        try:
            op = parts[0]
            n, c, h, w, calls, warm_ms = map(int, parts[1:])
            key = (n, c, h, w)
            if key not in cache:
                bn = torch.nn.BatchNorm2d(c)
                x = (torch.randn(n, c, h, w) * 2 + 0.5).requires_grad_(True)
                cache[key] = (bn, x, torch.randn(n, c, h, w))
            bn, x, dy = cache[key]
            if op == "train":
                bn.train()

                def call():
                    t0 = time.perf_counter()
                    bn(x).backward(dy)
                    return time.perf_counter() - t0
            elif op == "eval":
                bn.eval()

                def call():
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        bn(x)
                    return time.perf_counter() - t0
            else:
                raise ValueError(f"unknown op {op}")
            start = time.perf_counter()
            warm = 0
            while warm < 2 or time.perf_counter() - start < warm_ms / 1e3:
                call()
                warm += 1
            best = min(call() for _ in range(calls))
            print(f"{best * 1e3:.6f}", flush=True)
        except Exception as e:  # noqa: BLE001 - reported to the bench
            print("error", str(e).replace("\n", " "), flush=True)


if __name__ == "__main__":
    main()
