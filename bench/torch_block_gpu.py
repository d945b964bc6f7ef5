"""PyTorch baseline for `make bench-gpu` (bench/gpu.sh, issue 6's benchmark): the same Wan 2.1 model
as build/bench/gpu_model runs on our CUDA backend, written in PyTorch the way a PyTorch user would
train it fast on one GPU, and timed the same way at the same shapes.

The model follows tests/python/wan_reference.py's math (the official wan/modules/model.py): patch,
text and time embeddings, L blocks (modulated LayerNorm, self-attention with q/k RMSNorm and 3D
RoPE, cross-attention to the text, tanh-GELU FFN, gated residuals), the head, the flow-matching
loss with weight 1 + 2.5 sigma. Precision as wan-train's CUDA backend: fp32 parameters (they are
AdamW's masters), bf16 autocast for the matrix work, fp32 residual stream, time embedding,
modulation, norms' statistics and head. Attention: F.scaled_dot_product_attention (PyTorch picks
its fused kernel: cuDNN or FlashAttention on Hopper). Each block is compiled once with
torch.compile (its weights are arguments, so all layers share the compiled code) and
checkpointed (torch.utils.checkpoint, non-reentrant) as gpu_model recomputes (--recompute):
keep-attention (the default, as train.recompute = true with train.recompute_attention = false)
checkpoints the block in two parts, before and after the self-attention core, so that the
backward recomputes everything but the fused attention, whose output autograd keeps; full
checkpoints the whole block; none keeps everything. AdamW (fused), global-norm clipping at 1.0.

Timing as gpu_model: --warmup steps (the first compiles), then --steps steps, each ended by
torch.cuda.synchronize() and timed with the host clock; the median is reported. Model FLOPs by the
same Wan formula (lib/flops.h): for the 14B-width stack restricted to its L layers, for the 1.3B
model the whole formula. If L layers do not fit, L - 1 is tried (twice at most).

  python3 bench/torch_block_gpu.py --case 14b --layers 7 [--warmup 2] [--steps 5] [--json FILE]
  python3 bench/torch_block_gpu.py --case 1.3b
  python3 bench/torch_block_gpu.py --device cpu --tiny ...   (the same logic at a tiny size)

Prints one markdown table row per case and, with --json, the figures gpu.sh merges."""
import argparse
import gc
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

CASES = {
    # key: dim, heads, ffn, layers (default), text_len, text_dim, latent (F, H, W)
    '14b': dict(what='14B-width block stack', dim=5120, heads=40, ffn=13824, layers=None, text_len=512, text_dim=4096,
                latent=(24, 60, 104), stack=True),
    '1.3b': dict(what='Wan 2.1 1.3B model', dim=1536, heads=12, ffn=8960, layers=30, text_len=512, text_dim=4096,
                 latent=(21, 60, 104), stack=False),
}
TINY = {  # the sizes of gpu_model --cpu-twin
    '14b': dict(dim=256, heads=2, ffn=512, text_len=16, text_dim=64, latent=(4, 8, 8)),
    '1.3b': dict(dim=128, heads=1, ffn=256, layers=3, text_len=16, text_dim=64, latent=(3, 8, 8)),
}
IN_DIM, PATCH, FREQ, EPS, SHIFT = 16, (1, 2, 2), 256, 1e-6, 2.5
BLOCK_KEYS = ['modulation', 'q.w', 'q.b', 'k.w', 'k.b', 'v.w', 'v.b', 'o.w', 'o.b', 'norm_q', 'norm_k', 'norm3.w',
              'norm3.b', 'cq.w', 'cq.b', 'ck.w', 'ck.b', 'cv.w', 'cv.b', 'co.w', 'co.b', 'cnorm_q', 'cnorm_k', 'f0.w',
              'f0.b', 'f2.w', 'f2.b']


def train_flops(c, layers, S):
    """lib/flops.h: training FLOPs (3 x forward) of one sample of S tokens."""
    s, h, Fd, L, cl, T = S, c['dim'], c['ffn'], layers, c['text_len'], c['text_dim']
    pin = pout = IN_DIM * PATCH[0] * PATCH[1] * PATCH[2]
    self_attn = 2 * s * h * (3 * h) + 4 * s * s * h + 2 * s * h * h
    cross = 2 * s * h * h + 4 * cl * h * h + 4 * s * cl * h + 2 * s * h * h
    mlp = 4 * s * h * Fd
    fwd = L * (self_attn + cross + mlp) + 2 * s * pin * h + 2 * cl * (T * h + h * h) + 2 * s * h * pout
    return 3 * fwd


def rope_tables(grid, hd, device):
    """cos, sin [S, 1, hd/2] of the 3D RoPE (wan_rope_table / the official rope_params split)."""
    c = hd // 2
    nh = c // 3
    nf = c - 2 * nh
    Fp, Hp, Wp = grid

    def freqs(n, pos):
        j = torch.arange(n, dtype=torch.float64)
        return torch.outer(torch.arange(pos, dtype=torch.float64), torch.pow(10000.0, -2.0 * j / (2 * n)))

    ff, fh, fw = freqs(nf, Fp), freqs(nh, Hp), freqs(nh, Wp)
    ang = torch.cat([ff.view(Fp, 1, 1, nf).expand(Fp, Hp, Wp, nf), fh.view(1, Hp, 1, nh).expand(Fp, Hp, Wp, nh),
                     fw.view(1, 1, Wp, nh).expand(Fp, Hp, Wp, nh)], dim=-1).reshape(-1, 1, c)
    return torch.cos(ang).float().to(device), torch.sin(ang).float().to(device)


def rope(x, cos, sin):
    """x [B, S, H, hd] -> rotated adjacent pairs (2j, 2j+1), in fp32."""
    B, S, H, hd = x.shape
    x = x.float().view(B, S, H, hd // 2, 2)
    x0, x1 = x[..., 0], x[..., 1]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).view(B, S, H, hd)


def rms(x, w):
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + EPS) * w


def attention(q, k, v):
    """[B, S, H, hd] each (bf16) -> [B, S, H*hd]: PyTorch's fused SDPA (a plain softmax where there is none)."""
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if hasattr(F, 'scaled_dot_product_attention'):
        o = F.scaled_dot_product_attention(q, k, v)
    else:  # PyTorch < 2.0 (a CPU test only)
        s = torch.matmul(q.float(), k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
        o = torch.matmul(torch.softmax(s, dim=-1), v.float()).to(q.dtype)
    B, H, S, hd = o.shape
    return o.transpose(1, 2).reshape(B, S, H * hd)


def make_block(dev_type, heads, amp=True):
    """One block as a function of its input, e0, the text context, the RoPE tables and its weights,
    in two parts around the self-attention core: qkv(x, e0, cos, sin, *w) -> (q, k, v) ready for
    attention, rest(x, a, e0, ctx, *w) -> the block's output from its input and the attention
    output. block(x, e0, ctx, cos, sin, *w) is the whole. amp=False: plain fp32 (the --self-check
    against the reference)."""
    bf = torch.bfloat16 if amp else torch.float32

    def qkv(x, e0, cos, sin, *w):
        W = dict(zip(BLOCK_KEYS, w))
        B, S, D = x.shape
        H, hd = heads, D // heads
        with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=amp):
            m = (W['modulation'] + e0).chunk(6, dim=1)  # fp32 [B, 1, D] each
            y = F.layer_norm(x, (D,), eps=EPS) * (1 + m[1]) + m[0]
            q = rms(F.linear(y, W['q.w'], W['q.b']), W['norm_q']).view(B, S, H, hd)
            k = rms(F.linear(y, W['k.w'], W['k.b']), W['norm_k']).view(B, S, H, hd)
            v = F.linear(y, W['v.w'], W['v.b']).view(B, S, H, hd)
            return rope(q, cos, sin).to(bf), rope(k, cos, sin).to(bf), v.to(bf)

    def rest(x, a, e0, ctx, *w):
        W = dict(zip(BLOCK_KEYS, w))
        B, S, D = x.shape
        H, hd, L = heads, D // heads, ctx.shape[1]
        with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=amp):
            m = (W['modulation'] + e0).chunk(6, dim=1)
            x = x + F.linear(a, W['o.w'], W['o.b']).float() * m[2]
            # cross-attention (affine norm3, no gate)
            y = F.layer_norm(x, (D,), W['norm3.w'], W['norm3.b'], eps=EPS)
            q = rms(F.linear(y, W['cq.w'], W['cq.b']), W['cnorm_q']).view(B, S, H, hd)
            k = rms(F.linear(ctx, W['ck.w'], W['ck.b']), W['cnorm_k']).view(B, L, H, hd)
            v = F.linear(ctx, W['cv.w'], W['cv.b']).view(B, L, H, hd)
            a = attention(q.to(bf), k.to(bf), v.to(bf))
            x = x + F.linear(a, W['co.w'], W['co.b']).float()
            # FFN
            y = F.layer_norm(x, (D,), eps=EPS) * (1 + m[4]) + m[3]
            h = F.gelu(F.linear(y, W['f0.w'], W['f0.b']), approximate='tanh')
            x = x + F.linear(h, W['f2.w'], W['f2.b']).float() * m[5]
        return x

    def block(x, e0, ctx, cos, sin, *w):
        return rest(x, attention(*qkv(x, e0, cos, sin, *w)), e0, ctx, *w)
    return block, qkv, rest


def init_params(c, layers, device):
    """Random fp32 weights: matrices xavier-normal, norm weights 1 + N(0, 0.02), biases N(0, 0.02),
    modulation N(0, 1) / sqrt(dim); the head random too (not the zero init), as gpu_model."""
    D, Fd, T = c['dim'], c['ffn'], c['text_dim']
    pin = IN_DIM * PATCH[0] * PATCH[1] * PATCH[2]
    g = torch.Generator(device=device).manual_seed(0)  # drawn on the device: billions of values

    def mat(o, i):
        return torch.empty(o, i, device=device).normal_(0, math.sqrt(2.0 / (o + i)), generator=g)

    def vec(n, mean=0.0, sd=0.02):
        return torch.empty(n, device=device).normal_(mean, sd, generator=g)

    def mod(*shape):
        return torch.empty(*shape, device=device).normal_(0, 1 / math.sqrt(D), generator=g)

    P = {'patch.w': mat(D, pin).view(D, IN_DIM, *PATCH), 'patch.b': vec(D), 't0.w': mat(D, T), 't0.b': vec(D),
         't2.w': mat(D, D), 't2.b': vec(D), 'te0.w': mat(D, FREQ), 'te0.b': vec(D), 'te2.w': mat(D, D),
         'te2.b': vec(D), 'tp.w': mat(6 * D, D), 'tp.b': vec(6 * D), 'head.w': mat(pin, D), 'head.b': vec(pin),
         'head.mod': mod(1, 2, D)}
    blocks = []
    for _ in range(layers):
        b = {'modulation': mod(1, 6, D)}
        for p in ('q', 'k', 'v', 'o', 'cq', 'ck', 'cv', 'co'):
            b[p + '.w'], b[p + '.b'] = mat(D, D), vec(D)
        for n in ('norm_q', 'norm_k', 'cnorm_q', 'cnorm_k'):
            b[n] = vec(D, 1.0)
        b['norm3.w'], b['norm3.b'] = vec(D, 1.0), vec(D)
        b['f0.w'], b['f0.b'], b['f2.w'], b['f2.b'] = mat(Fd, D), vec(Fd), mat(D, Fd), vec(D)
        blocks.append([b[k] for k in BLOCK_KEYS])
    P = {k: v.requires_grad_(True) for k, v in P.items()}
    blocks = [[t.requires_grad_(True) for t in b] for b in blocks]
    return P, blocks


def sinusoid(t, dim):
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    s = torch.outer(t.double(), freqs)
    return torch.cat([torch.cos(s), torch.sin(s)], dim=1).float()


def make_step(c, P, blocks, dev_type, fns, recompute, amp=True):
    block_fn, qkv_fn, rest_fn = fns
    ckpt = torch.utils.checkpoint.checkpoint

    D = c['dim']
    pt, ph, pw = PATCH

    def step(latent, noise, sigma, text, cos, sin, opt, params):
        opt.zero_grad(set_to_none=True)
        B, C, Fr, Hh, Ww = latent.shape
        s = sigma.view(-1, 1, 1, 1, 1)
        xt = (1 - s) * latent + s * noise
        # target in the head's token layout (pt, ph, pw, c), c fastest
        tgt = (noise - latent).view(B, C, Fr // pt, pt, Hh // ph, ph, Ww // pw, pw)
        tgt = tgt.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(B, -1, pt * ph * pw * C)
        with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=amp):
            x = F.conv3d(xt, P['patch.w'], P['patch.b'], stride=PATCH).flatten(2).transpose(1, 2).float().contiguous()
            ctx = F.linear(F.gelu(F.linear(text, P['t0.w'], P['t0.b']), approximate='tanh'), P['t2.w'], P['t2.b'])
        with torch.autocast(dev_type, enabled=False):  # time embedding in fp32, as the official model
            e = F.linear(F.silu(F.linear(sinusoid(1000.0 * sigma, FREQ), P['te0.w'], P['te0.b'])), P['te2.w'],
                         P['te2.b'])
            e0 = F.linear(F.silu(e), P['tp.w'], P['tp.b']).unflatten(1, (6, D))
        ctx = ctx.to(torch.bfloat16 if amp else torch.float32)
        for w in blocks:
            if recompute == 'full':
                x = ckpt(block_fn, x, e0, ctx, cos, sin, *w, use_reentrant=False)
            elif recompute == 'keep-attention':
                a = attention(*ckpt(qkv_fn, x, e0, cos, sin, *w, use_reentrant=False))
                x = ckpt(rest_fn, x, a, e0, ctx, *w, use_reentrant=False)
            else:
                x = block_fn(x, e0, ctx, cos, sin, *w)
        with torch.autocast(dev_type, enabled=False):  # head in fp32
            hm = (P['head.mod'] + e.unsqueeze(1)).chunk(2, dim=1)
            out = F.linear(F.layer_norm(x, (D,), eps=EPS) * (1 + hm[1]) + hm[0], P['head.w'], P['head.b'])
            lat = C * Fr * Hh * Ww
            per = ((out - tgt) ** 2).flatten(1).sum(dim=1) / lat
            loss = (per * (1 + SHIFT * sigma)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss
    return step


def run(c, layers, args, device):
    dev_type = device.type
    Fr, Hh, Ww = c['latent']
    grid = (Fr // PATCH[0], Hh // PATCH[1], Ww // PATCH[2])
    S = grid[0] * grid[1] * grid[2]
    hd = c['dim'] // c['heads']
    P, blocks = init_params(c, layers, device)
    params = list(P.values()) + [t for b in blocks for t in b]
    kw = {'fused': True} if dev_type == 'cuda' else {}
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, **kw)
    fns = make_block(dev_type, c['heads'])
    compiled = False
    if args.compile and hasattr(torch, 'compile'):
        fns = tuple(torch.compile(f, dynamic=False) for f in fns)
        compiled = True
    g = torch.Generator(device='cpu').manual_seed(1)
    latent = torch.randn(1, IN_DIM, Fr, Hh, Ww, generator=g).to(device)
    noise = torch.randn(1, IN_DIM, Fr, Hh, Ww, generator=g).to(device)
    text = torch.randn(1, c['text_len'], c['text_dim'], generator=g).to(device)
    sigma = torch.full((1,), 0.6, device=device)
    cos, sin = rope_tables(grid, hd, device)
    sync = torch.cuda.synchronize if dev_type == 'cuda' else (lambda: None)
    if dev_type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    step = make_step(c, P, blocks, dev_type, fns, args.recompute)
    times, losses = [], []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        try:
            loss = step(latent, noise, sigma, text, cos, sin, opt, params)
        except Exception as e:  # noqa: BLE001
            if compiled and not isinstance(e, torch.cuda.OutOfMemoryError) and i == 0:
                print('torch_block_gpu: torch.compile failed (%s: %s); running eager' % (type(e).__name__,
                      str(e).splitlines()[0] if str(e) else ''), file=sys.stderr)
                fns = make_block(dev_type, c['heads'])
                compiled = False
                step = make_step(c, P, blocks, dev_type, fns, args.recompute)
                loss = step(latent, noise, sigma, text, cos, sin, opt, params)
            else:
                raise
        sync()
        dt = time.perf_counter() - t0
        losses.append(float(loss.detach()))
        if i >= args.warmup:
            times.append(dt)
    if not all(math.isfinite(v) for v in losses):
        raise RuntimeError('loss is not finite: %s' % losses)
    med = statistics.median(times)
    fl_layers = train_flops(c, layers, S) - train_flops(c, 0, S)
    fl_model = train_flops(c, layers, S)
    fl = fl_layers if c['stack'] else fl_model
    peak = torch.cuda.max_memory_allocated() if dev_type == 'cuda' else 0
    total = torch.cuda.get_device_properties(device).total_memory if dev_type == 'cuda' else 0
    return {'layers': layers, 'tokens': S, 'step_s': med, 'step_min_s': min(times), 'step_max_s': max(times),
            'steps': len(times), 'tokens_per_s': S / med, 'model_tflops': fl / med / 1e12,
            'tflops_layers': fl_layers / med / 1e12, 'tflops_whole_formula': fl_model / med / 1e12,
            'mem_peak_gib': peak / 2**30, 'mem_total_gib': total / 2**30, 'compiled': compiled,
            'recompute': args.recompute, 'losses': losses}


def self_check():
    """This model in fp32 (no autocast) against tests/python/wan_reference.py (the golden reference
    our C model is tested against) with the same weights and inputs: the losses must agree."""
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, '..', 'tests', 'python'))
    import wan_reference as ref
    ref.DT = torch.float32
    c = dict(CASES['14b'])
    c.update(TINY['14b'])
    L, dev = 2, torch.device('cpu')
    P, blocks = init_params(c, L, dev)
    m = {'patch_embedding.weight': P['patch.w'], 'patch_embedding.bias': P['patch.b'], 'head.head.weight': P['head.w'],
         'head.head.bias': P['head.b'], 'head.modulation': P['head.mod']}
    for ours, theirs in (('t0', 'text_embedding.0'), ('t2', 'text_embedding.2'), ('te0', 'time_embedding.0'),
                         ('te2', 'time_embedding.2'), ('tp', 'time_projection.1')):
        m[theirs + '.weight'], m[theirs + '.bias'] = P[ours + '.w'], P[ours + '.b']
    names = {'q': 'self_attn.q', 'k': 'self_attn.k', 'v': 'self_attn.v', 'o': 'self_attn.o', 'cq': 'cross_attn.q',
             'ck': 'cross_attn.k', 'cv': 'cross_attn.v', 'co': 'cross_attn.o', 'f0': 'ffn.0', 'f2': 'ffn.2',
             'norm3': 'norm3', 'norm_q': 'self_attn.norm_q', 'norm_k': 'self_attn.norm_k',
             'cnorm_q': 'cross_attn.norm_q', 'cnorm_k': 'cross_attn.norm_k', 'modulation': 'modulation'}
    for i, w in enumerate(blocks):
        for k, v in zip(BLOCK_KEYS, w):
            a, _, b = k.partition('.')
            full = 'blocks.%d.%s' % (i, names[a]) + ('' if a == 'modulation' else '.bias' if b == 'b' else '.weight')
            m[full] = v
    cfg = ref.Config({'dim': c['dim'], 'ffn_dim': c['ffn'], 'num_heads': c['heads'], 'num_layers': L, 'freq_dim': FREQ,
                      'text_dim': c['text_dim'], 'text_len': c['text_len'], 'in_dim': IN_DIM, 'out_dim': IN_DIM,
                      'patch_size': list(PATCH), 'eps': EPS})
    g = torch.Generator().manual_seed(3)
    Fr, Hh, Ww = c['latent']
    latent, noise = torch.randn(1, IN_DIM, Fr, Hh, Ww, generator=g), torch.randn(1, IN_DIM, Fr, Hh, Ww, generator=g)
    text, sigma = torch.randn(1, c['text_len'], c['text_dim'], generator=g), torch.tensor([0.6])
    with torch.no_grad():
        _, _, want = ref.flow_loss({k: v.detach() for k, v in m.items()}, cfg, latent, noise, sigma, text, shift=SHIFT)

    class NoOpt:
        def zero_grad(self, set_to_none=True):
            pass

        def step(self):
            pass

    cos, sin = rope_tables((Fr // PATCH[0], Hh // PATCH[1], Ww // PATCH[2]), c['dim'] // c['heads'], dev)
    ok = len(m) == 15 + len(BLOCK_KEYS) * L
    for recompute in ('keep-attention', 'full', 'none'):
        step = make_step(c, P, blocks, 'cpu', make_block('cpu', c['heads'], amp=False), recompute, amp=False)
        got = step(latent, noise, sigma, text, cos, sin, NoOpt(), list(m.values())).detach()
        rel = abs(float(got) - float(want)) / abs(float(want))
        ok = ok and rel < 1e-5
        print('self-check (recompute %s): wan_reference.py loss %.7f, this model %.7f (fp32, %d tensors): '
              'rel diff %.2e: %s' % (recompute, float(want), float(got), len(m), rel, 'ok' if rel < 1e-5 else 'FAIL'))
    # the three ways of recomputing give the same gradients
    grads = []
    for recompute in ('keep-attention', 'full', 'none'):
        for t in m.values():
            t.grad = None
        step = make_step(c, P, blocks, 'cpu', make_block('cpu', c['heads'], amp=False), recompute, amp=False)
        step(latent, noise, sigma, text, cos, sin, NoOpt(), list(m.values()))
        grads.append(torch.cat([t.grad.flatten() for t in m.values()]))
    gdiff = max(float((g - grads[2]).abs().max() / grads[2].abs().max()) for g in grads[:2])
    ok = ok and gdiff < 1e-5
    print('self-check: gradients with keep-attention / full recompute against none: worst %.2e: %s' % (
        gdiff, 'ok' if gdiff < 1e-5 else 'FAIL'))
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--case', choices=sorted(CASES), default='14b')
    ap.add_argument('--layers', type=int, default=0, help='layers (14b: the number gpu_model fitted; default 4)')
    ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--steps', type=int, default=5)
    ap.add_argument('--device', default='cuda')
    ap.add_argument('--tiny', action='store_true', help="gpu_model --cpu-twin's sizes")
    ap.add_argument('--no-compile', dest='compile', action='store_false')
    ap.add_argument('--recompute', choices=('keep-attention', 'full', 'none'), default='keep-attention',
                    help="activation recompute, as gpu_model's (default keep-attention)")
    ap.add_argument('--threads', type=int, default=0)
    ap.add_argument('--json', default='')
    ap.add_argument('--self-check', action='store_true',
                    help='compare this model (fp32, CPU) with tests/python/wan_reference.py and exit')
    args = ap.parse_args()
    if args.self_check:
        return self_check()
    if args.steps < 1 or args.warmup < 0:
        ap.error('--steps >= 1, --warmup >= 0')
    if args.threads:
        torch.set_num_threads(args.threads)
    c = dict(CASES[args.case])
    if args.tiny:
        c.update(TINY[args.case])
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        print('torch_block_gpu: no CUDA GPU found (torch %s)' % torch.__version__, file=sys.stderr)
        return 1
    layers = args.layers or c['layers'] or 4
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
        be = torch.backends.cuda
        sdpa = [n for n, f in (('cuDNN', 'cudnn_sdp_enabled'), ('flash', 'flash_sdp_enabled'),
                               ('mem-efficient', 'mem_efficient_sdp_enabled')) if getattr(be, f, lambda: False)()]
        versions = 'PyTorch %s, CUDA %s, cuDNN %s; SDPA kernels allowed: %s' % (
            torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), ', '.join(sdpa))
    else:
        name, versions = 'CPU (%d threads)' % torch.get_num_threads(), 'PyTorch %s' % torch.__version__
    rec = {'case': args.case, 'impl': 'torch', 'what': c['what'], 'device': name, 'versions': versions,
           'dim': c['dim'], 'heads': c['heads'], 'ffn': c['ffn'], 'text_len': c['text_len'], 'text_dim': c['text_dim'],
           'recompute': args.recompute, 'ok': False,
           'flops_counted': '3 x L x (self + cross + mlp), layers only' if c['stack'] else 'whole Wan formula'}
    tries = 3 if c['stack'] else 1
    for t in range(tries):
        L = layers - t
        if L < 1:
            break
        oom = False
        try:
            rec.update(run(c, L, args, device))
            rec['ok'] = True
            break
        except torch.cuda.OutOfMemoryError:
            oom = True  # free the failed run's tensors outside the handler (its traceback holds them)
        if oom:
            print('torch_block_gpu: %d layers do not fit: out of memory%s' % (L, '; trying %d' % (L - 1)
                  if t + 1 < tries else ''), file=sys.stderr)
            rec['layers'] = L
            rec['error'] = 'out of memory at %d layers' % L
            gc.collect()
            if device.type == 'cuda':
                torch.cuda.empty_cache()
    if rec['ok']:
        print('| PyTorch: %s | %d | %.1f / %.1f | %.1f | %.0f | **%.1f** | %s%s |' % (
            c['what'], rec['layers'], rec['mem_peak_gib'], rec['mem_total_gib'], rec['step_s'] * 1e3,
            rec['tokens_per_s'], rec['model_tflops'], 'compiled' if rec['compiled'] else 'eager',
            ', recompute ' + rec['recompute']))
        print('  %s on %s; losses %s' % (versions, name, ' '.join('%.4f' % v for v in rec['losses'])))
    else:
        print('| PyTorch: %s | %s | FAILED: %s |' % (c['what'], rec.get('layers', '?'), rec.get('error', '?')))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump([rec], f, indent=1)
    return 0 if rec['ok'] else 1


if __name__ == '__main__':
    sys.exit(main())
