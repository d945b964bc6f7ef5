"""An independent PyTorch implementation of the Wan 2.1 text-to-video DiT (following the
official wan/modules/model.py), in float64, used as the golden reference for our C model:
same weights (official key names) and inputs -> pred, flow-matching loss and gradients."""
import json
import math
import struct

import numpy as np
import torch

DT = torch.float64  # the golden test runs in float64; the CPU benchmark sets float32


def sinusoidal_embedding_1d(dim, t):
    half = dim // 2
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=DT) / half)
    s = torch.outer(t.to(DT), freqs)
    return torch.cat([torch.cos(s), torch.sin(s)], dim=1)


def rope_params(max_len, dim, theta=10000.0):
    freqs = torch.outer(torch.arange(max_len, dtype=DT),
                        1.0 / torch.pow(theta, torch.arange(0, dim, 2, dtype=DT) / dim))
    return torch.polar(torch.ones_like(freqs), freqs)


def rope_apply(x, grid, freqs):
    """x [B, S, N, hd]; rotates adjacent pairs by the (frame, height, width) angles."""
    B, S, N, hd = x.shape
    c = hd // 2
    parts = freqs.split([c - 2 * (c // 3), c // 3, c // 3], dim=1)
    F, H, W = grid
    fr = torch.cat([parts[0][:F].view(F, 1, 1, -1).expand(F, H, W, -1),
                    parts[1][:H].view(1, H, 1, -1).expand(F, H, W, -1),
                    parts[2][:W].view(1, 1, W, -1).expand(F, H, W, -1)], dim=-1).reshape(S, 1, c)
    xc = torch.view_as_complex(x.reshape(B, S, N, c, 2).contiguous())
    return torch.view_as_real(xc * fr.to(xc.dtype)).reshape(B, S, N, hd)


def layer_norm(x, eps, w=None, b=None):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], w, b, eps)


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * w


def attention(q, k, v):
    """[B, S, N, hd] each; softmax(q k^T / sqrt(hd)) v, no mask."""
    hd = q.shape[-1]
    s = torch.einsum('bqnd,bknd->bnqk', q, k) / math.sqrt(hd)
    return torch.einsum('bnqk,bknd->bqnd', torch.softmax(s, dim=-1), v)


def linear(x, P, name):
    return x @ P[name + '.weight'].T + P[name + '.bias']


def gelu_tanh(x):
    return torch.nn.functional.gelu(x, approximate='tanh')


def param_shapes(c):
    """Official key -> shape for a config dict (dim, ffn_dim, num_layers, freq_dim, text_dim,
    in_dim, out_dim, patch_size)."""
    D, F, pv = c['dim'], c['ffn_dim'], c['patch_size'][0] * c['patch_size'][1] * c['patch_size'][2]
    s = {'patch_embedding.weight': [D, c['in_dim']] + list(c['patch_size']), 'patch_embedding.bias': [D],
         'text_embedding.0.weight': [D, c['text_dim']], 'text_embedding.0.bias': [D],
         'text_embedding.2.weight': [D, D], 'text_embedding.2.bias': [D],
         'time_embedding.0.weight': [D, c['freq_dim']], 'time_embedding.0.bias': [D],
         'time_embedding.2.weight': [D, D], 'time_embedding.2.bias': [D],
         'time_projection.1.weight': [6 * D, D], 'time_projection.1.bias': [6 * D],
         'head.head.weight': [c['out_dim'] * pv, D], 'head.head.bias': [c['out_dim'] * pv],
         'head.modulation': [1, 2, D]}
    for i in range(c['num_layers']):
        p = 'blocks.%d.' % i
        s[p + 'modulation'] = [1, 6, D]
        for a in ('self_attn', 'cross_attn'):
            for x in 'qkvo':
                s[p + a + '.' + x + '.weight'] = [D, D]
                s[p + a + '.' + x + '.bias'] = [D]
            s[p + a + '.norm_q.weight'] = [D]
            s[p + a + '.norm_k.weight'] = [D]
        s[p + 'norm3.weight'] = [D]
        s[p + 'norm3.bias'] = [D]
        s[p + 'ffn.0.weight'] = [F, D]
        s[p + 'ffn.0.bias'] = [F]
        s[p + 'ffn.2.weight'] = [D, F]
        s[p + 'ffn.2.bias'] = [D]
    return s


class Config:
    def __init__(self, d):
        self.__dict__.update(d)
        self.head_dim = self.dim // self.num_heads


def forward(P, cfg, latent, t, context):
    """latent [B, C, F, H, W] (the model input), t [B], context [B, L, text_dim] -> [B, C, F, H, W]."""
    B, C, F, H, W = latent.shape
    pt, ph, pw = cfg.patch_size
    D, N, hd = cfg.dim, cfg.num_heads, cfg.head_dim
    grid = (F // pt, H // ph, W // pw)
    # patch embedding: Conv3d with kernel = stride = patch, tokens in (f, h, w) order
    x = torch.nn.functional.conv3d(latent, P['patch_embedding.weight'], P['patch_embedding.bias'],
                                   stride=(pt, ph, pw))
    x = x.flatten(2).transpose(1, 2)  # [B, S, D]
    S = x.shape[1]
    # time
    e = linear(sinusoidal_embedding_1d(cfg.freq_dim, t), P, 'time_embedding.0')
    e = linear(torch.nn.functional.silu(e), P, 'time_embedding.2')
    e0 = linear(torch.nn.functional.silu(e), P, 'time_projection.1').unflatten(1, (6, D))
    # text
    ctx = linear(gelu_tanh(linear(context, P, 'text_embedding.0')), P, 'text_embedding.2')
    freqs = torch.cat([rope_params(1024, hd - 4 * (hd // 6)), rope_params(1024, 2 * (hd // 6)),
                       rope_params(1024, 2 * (hd // 6))], dim=1)
    for i in range(cfg.num_layers):
        p = 'blocks.%d.' % i
        m = (P[p + 'modulation'] + e0).chunk(6, dim=1)  # each [B, 1, D]
        # self-attention
        y = layer_norm(x, cfg.eps) * (1 + m[1]) + m[0]
        q = rms_norm(linear(y, P, p + 'self_attn.q'), P[p + 'self_attn.norm_q.weight'], cfg.eps).view(B, S, N, hd)
        k = rms_norm(linear(y, P, p + 'self_attn.k'), P[p + 'self_attn.norm_k.weight'], cfg.eps).view(B, S, N, hd)
        v = linear(y, P, p + 'self_attn.v').view(B, S, N, hd)
        a = attention(rope_apply(q, grid, freqs), rope_apply(k, grid, freqs), v).reshape(B, S, D)
        x = x + linear(a, P, p + 'self_attn.o') * m[2]
        # cross-attention (affine norm3, no gate)
        y = layer_norm(x, cfg.eps, P[p + 'norm3.weight'], P[p + 'norm3.bias'])
        L = ctx.shape[1]
        q = rms_norm(linear(y, P, p + 'cross_attn.q'), P[p + 'cross_attn.norm_q.weight'], cfg.eps).view(B, S, N, hd)
        k = rms_norm(linear(ctx, P, p + 'cross_attn.k'), P[p + 'cross_attn.norm_k.weight'], cfg.eps).view(B, L, N, hd)
        v = linear(ctx, P, p + 'cross_attn.v').view(B, L, N, hd)
        x = x + linear(attention(q, k, v).reshape(B, S, D), P, p + 'cross_attn.o')
        # FFN
        y = layer_norm(x, cfg.eps) * (1 + m[4]) + m[3]
        x = x + linear(gelu_tanh(linear(y, P, p + 'ffn.0')), P, p + 'ffn.2') * m[5]
    # head with its 2-way modulation from e
    hm = (P['head.modulation'] + e.unsqueeze(1)).chunk(2, dim=1)
    out = linear(layer_norm(x, cfg.eps) * (1 + hm[1]) + hm[0], P, 'head.head')  # [B, S, pt*ph*pw*C]
    # unpatchify: channels ordered (pt, ph, pw, c), c fastest
    Fp, Hp, Wp = grid
    u = out.view(B, Fp, Hp, Wp, pt, ph, pw, cfg.out_dim)
    u = torch.einsum('bfhwpqrc->bcfphqwr', u)
    return u.reshape(B, cfg.out_dim, F, H, W)


def flow_loss(P, cfg, latent, noise, sigma, context, shift):
    """Training objective at given noise and sigma: returns pred, loss, loss_weighted."""
    s = sigma.view(-1, 1, 1, 1, 1)
    xt = (1 - s) * latent + s * noise
    pred = forward(P, cfg, xt, 1000.0 * sigma, context)
    per_sample = ((pred - (noise - latent)) ** 2).flatten(1).mean(dim=1)
    loss = per_sample.mean()
    loss_w = (per_sample * (1 + shift * sigma)).mean()
    return pred, loss, loss_w


# ---- safetensors, written and read by hand (the format is tiny; no extra package needed) ----

_DT = {'F32': (np.float32, 4), 'F64': (np.float64, 8)}


def save_safetensors(path, tensors, metadata=None):
    header, off, blobs = {}, 0, []
    for name, arr in tensors.items():
        a = np.ascontiguousarray(arr, dtype=np.float32)
        header[name] = {'dtype': 'F32', 'shape': list(a.shape), 'data_offsets': [off, off + a.nbytes]}
        blobs.append(a.tobytes())
        off += a.nbytes
    if metadata:
        header['__metadata__'] = metadata
    h = json.dumps(header).encode()
    h += b' ' * ((8 - len(h) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == '__metadata__':
            continue
        np_dt, _ = _DT[info['dtype']]
        a, b = info['data_offsets']
        out[name] = np.frombuffer(data[a:b], dtype=np_dt).reshape(info['shape'])
    return out
