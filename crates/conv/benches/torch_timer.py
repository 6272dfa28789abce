#!/usr/bin/env python3
"""PyTorch's side of `benches/versus.rs`: times `torch.nn.functional.conv2d` on request.

Started by the bench as `python torch_timer.py THREADS`; it sets PyTorch's intra-op threads
to THREADS (inter-op threads to 1), prints one line `ready <torch version>`, then answers
each request line on stdin with one line on stdout until stdin closes:

    fwd|bwd N C H W K R S SH SW PH PW DH DW GROUPS CALLS WARM_MS
      -> <minimum over CALLS timed calls, in milliseconds>

Each request first calls the operation untimed for at least WARM_MS milliseconds (and at
least twice), then times CALLS single calls with `time.perf_counter` and answers the fastest.
`fwd` times `F.conv2d` under `torch.no_grad()`; `bwd` times `y.backward(dy)` of a forward run
outside the timer, which computes the input, weight and bias gradients. Operands are drawn
once per shape and kept, so repeated requests time the same tensors. Errors are answered as
`error <message>`.
"""
import sys
import time

import torch
import torch.nn.functional as F


def main():
    threads = int(sys.argv[1])
    torch.set_num_threads(threads)
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
            n, c, h, w, k, r, s, sh, sw, ph, pw, dh, dw, groups, calls, warm_ms = map(int, parts[1:])
            key = (n, c, h, w, k, r, s, sh, sw, ph, pw, dh, dw, groups)
            if key not in cache:
                x = torch.randn(n, c, h, w)
                wt = torch.randn(k, c // groups, r, s) * 0.1
                b = torch.randn(k) * 0.1
                with torch.no_grad():
                    y = F.conv2d(x, wt, b, (sh, sw), (ph, pw), (dh, dw), groups)
                cache[key] = (x, wt, b, torch.randn_like(y))
            x, wt, b, dy = cache[key]
            conv = (sh, sw), (ph, pw), (dh, dw), groups
            if op == "fwd":
                def call():
                    t0 = time.perf_counter()
                    with torch.no_grad():
                        F.conv2d(x, wt, b, *conv)
                    return time.perf_counter() - t0
            elif op == "bwd":
                xg, wg, bg = (t.clone().requires_grad_(True) for t in (x, wt, b))

                def call():
                    xg.grad = wg.grad = bg.grad = None
                    y = F.conv2d(xg, wg, bg, *conv)
                    t0 = time.perf_counter()
                    y.backward(dy)
                    return time.perf_counter() - t0
            else:
                raise ValueError("unknown operation %r" % op)
            start, warm = time.perf_counter(), 0
            while warm < 2 or time.perf_counter() - start < warm_ms / 1000.0:
                call()
                warm += 1
            best = min(call() for _ in range(calls))
            print("%.6f" % (best * 1000.0), flush=True)
        except Exception as e:  # answered, so that the bench can report it
            print("error %s" % str(e).replace("\n", " "), flush=True)


if __name__ == "__main__":
    main()
