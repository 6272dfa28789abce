#!/usr/bin/env python3
"""The peers' side of `benches/versus.rs`: times PyTorch's `torch.nn.functional.conv2d` and
ONNX Runtime's `Conv` on request.

Started by the bench as `python torch_timer.py THREADS`; it sets PyTorch's intra-op threads
to THREADS (inter-op threads to 1), prints one line
`ready <torch version> <torch cpu capability> <onnxruntime version or "none">`, then answers
each request line on stdin with one line on stdout until stdin closes:

    fwd|bwd|ort N C H W K R S SH SW PH PW DH DW GROUPS CALLS WARM_MS
      -> <minimum over CALLS timed calls, in milliseconds>

Each request first calls the operation untimed for at least WARM_MS milliseconds (and at
least twice), then times CALLS single calls with `time.perf_counter` and answers the fastest.
`fwd` times `F.conv2d` under `torch.no_grad()`; `bwd` times `y.backward(dy)` of a forward run
outside the timer, which computes the input, weight and bias gradients; `ort` times an ONNX
Runtime session holding one `Conv` node (opset 17, the same weights, THREADS intra-op threads,
sequential execution, all graph optimizations, input and output bound once with
`run_with_iobinding`, as `../shared/peers/conv_bench.py` does). Operands are drawn
once per shape and kept, so repeated requests time the same tensors. Errors are answered as
`error <message>`.
"""
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

try:
    import onnxruntime as ort
except ImportError:  # answered per request: `ort` then reports an error
    ort = None


def ort_call(key, threads, x, wt, b, y_shape):
    """A call of an ONNX Runtime session for one convolution, inputs and output bound."""
    from onnx import TensorProto, helper, numpy_helper

    n, c, h, w, k, r, s, sh, sw, ph, pw, dh, dw, groups = key
    node = helper.make_node("Conv", ["X", "W", "B"], ["Y"], kernel_shape=[r, s],
                            strides=[sh, sw], pads=[ph, pw, ph, pw], dilations=[dh, dw],
                            group=groups)
    graph = helper.make_graph(
        [node], "conv",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [n, c, h, w])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, list(y_shape))],
        initializer=[numpy_helper.from_array(wt.numpy(), "W"),
                     numpy_helper.from_array(b.numpy(), "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    io = sess.io_binding()
    xv = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(x.numpy()))
    yv = ort.OrtValue.ortvalue_from_numpy(np.empty(y_shape, dtype=np.float32))
    io.bind_ortvalue_input("X", xv)
    io.bind_ortvalue_output("Y", yv)
    ro = ort.RunOptions()

    def call():
        t0 = time.perf_counter()
        sess.run_with_iobinding(io, ro)
        return time.perf_counter() - t0

    # Keep the values alive with the closure.
    call.keep = (sess, io, xv, yv)
    return call


def main():
    threads = int(sys.argv[1])
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(0)
    cache = {}
    sessions = {}
    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")()
    print("ready", torch.__version__, capability, ort.__version__ if ort else "none", flush=True)
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
            elif op == "ort":
                if ort is None:
                    raise RuntimeError("onnxruntime is not importable")
                if key not in sessions:
                    sessions[key] = ort_call(key, threads, x, wt, b, tuple(dy.shape))
                call = sessions[key]
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
