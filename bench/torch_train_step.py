"""PyTorch baseline for bench/train_cpu.sh: the same Wan model (tests/python/wan_reference.py,
float32), a full training step (forward, flow-matching loss, backward, AdamW) on CPU with the
given threads. Prints the median step time of the steps after the first."""
import ctypes
import os
import statistics
import sys
import time

# OpenBLAS (PyTorch's BLAS here) falls back to its slow generic kernels on CPUs it does not
# recognise; give the baseline the same kernels wan-train picks for itself.
if 'OPENBLAS_CORETYPE' not in os.environ:
    core = ctypes.CDLL('libopenblas.so.0')
    core.openblas_get_corename.restype = ctypes.c_char_p
    flags = open('/proc/cpuinfo').read()
    if core.openblas_get_corename() == b'Prescott':
        best = 'SkylakeX' if ' avx512bw' in flags else 'Haswell' if ' avx2' in flags else None
        if best:
            os.execve(sys.executable, [sys.executable] + sys.argv, dict(os.environ, OPENBLAS_CORETYPE=best))

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests', 'python'))
import wan_reference as ref  # noqa: E402

dim, ffn, heads, layers, F, H, W, threads, steps = map(int, sys.argv[1:10])
torch.set_num_threads(threads)
ref.DT = torch.float32
c = {'dim': dim, 'ffn_dim': ffn, 'num_heads': heads, 'num_layers': layers, 'freq_dim': 256, 'text_dim': 4096,
     'text_len': 512, 'in_dim': 16, 'out_dim': 16, 'patch_size': [1, 2, 2], 'eps': 1e-6}
cfg = ref.Config(c)
g = torch.Generator().manual_seed(0)
P = {}
shapes = ref.param_shapes(c)
for k, s in shapes.items():
    P[k] = (torch.randn(s, generator=g) * 0.02).requires_grad_(True)
opt = torch.optim.AdamW(P.values(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
B = 1
times = []
for step in range(steps):
    latent = torch.randn(B, 16, F, H, W, generator=g)
    noise = torch.randn(B, 16, F, H, W, generator=g)
    sigma = torch.rand(B, generator=g)
    ctx = torch.randn(B, 512, 4096, generator=g) * 0.1
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    _, _, loss = ref.flow_loss(P, cfg, latent, noise, sigma, ctx, shift=2.5)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(P.values(), 1.0)
    opt.step()
    times.append(time.perf_counter() - t0)
print('%.6f' % statistics.median(times[1:]))
