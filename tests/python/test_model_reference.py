"""Golden test: our C model (bin/wan-eval forward on CPU, fp32) against the independent PyTorch
reference in wan_reference.py (float64) on tiny configs: same weights (imported from an
official-layout release directory through bin/wan-reshard import) and inputs; pred, loss,
loss_weighted and the gradient of every parameter must agree within 1e-5 relative."""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import wan_reference as ref  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
BIN = os.path.join(ROOT, 'bin')
TOL = 1e-5
passed = failed = 0


def report(ok, name, detail=''):
    global passed, failed
    if ok:
        passed += 1
        print('ok   %s %s' % (name, detail))
    else:
        failed += 1
        print('FAIL %s %s' % (name, detail))
    sys.stdout.flush()


def rel_err(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def run_case(name, c, B, lat_shape, seed):
    rng = np.random.default_rng(seed)
    shapes = ref.param_shapes(c)
    weights = {}
    for k, shp in shapes.items():
        fan = shp[-1] if len(shp) > 1 else 1
        scale = 1.0 / np.sqrt(fan) if k.endswith('weight') and len(shp) > 1 else 0.3
        w = rng.standard_normal(shp).astype(np.float32) * np.float32(scale)
        if 'norm' in k and k.endswith('weight'):
            w = (1.0 + 0.2 * rng.standard_normal(shp)).astype(np.float32)
        weights[k] = w
    F, H, W = lat_shape
    C = c['in_dim']
    latent = rng.standard_normal((B, C, F, H, W)).astype(np.float32)
    noise = rng.standard_normal((B, C, F, H, W)).astype(np.float32)
    sigma = rng.uniform(0.05, 0.95, B).astype(np.float32)
    context = rng.standard_normal((B, c['text_len'], c['text_dim'])).astype(np.float32)
    context[:, c['text_len'] - 2:, :] = 0  # zero-padded rows, attended as in the official model
    timestep = (1000.0 * sigma).astype(np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        rel = os.path.join(tmp, 'release')
        os.makedirs(rel)
        cfgj = {'_class_name': 'WanModel', 'model_type': 't2v', 'dim': c['dim'], 'ffn_dim': c['ffn_dim'],
                'freq_dim': c['freq_dim'], 'in_dim': c['in_dim'], 'out_dim': c['out_dim'],
                'num_heads': c['num_heads'], 'num_layers': c['num_layers'], 'text_len': c['text_len'],
                'text_dim': c['text_dim'], 'patch_size': list(c['patch_size']), 'eps': c['eps']}
        with open(os.path.join(rel, 'config.json'), 'w') as f:
            json.dump(cfgj, f)
        ref.save_safetensors(os.path.join(rel, 'diffusion_pytorch_model.safetensors'), weights)
        ckpt = os.path.join(tmp, 'ckpt')
        # the checkpoint records run settings too: a latent shape this model can take
        r = subprocess.run([os.path.join(BIN, 'wan-reshard'), 'import', rel, '--to', ckpt, '--quiet',
                            '--set', 'train.latent_shape=[%d,%d,%d]' % lat_shape], capture_output=True, text=True)
        if r.returncode != 0:
            report(False, name + ' import', r.stderr[-2000:])
            return
        inp, out = os.path.join(tmp, 'in.safetensors'), os.path.join(tmp, 'out.safetensors')
        ref.save_safetensors(inp, {'latent': latent, 'noise': noise, 'sigma': sigma, 'context': context,
                                   'timestep': timestep})
        r = subprocess.run([os.path.join(BIN, 'wan-eval'), 'forward', '--weights', ckpt, '--inputs', inp,
                            '--out', out, '--objective', 'pretrain'], capture_output=True, text=True)
        if r.returncode != 0:
            report(False, name + ' forward', r.stderr[-2000:])
            return
        got = ref.load_safetensors(out)

    cfg = ref.Config(c)
    P = {k: torch.tensor(v, dtype=ref.DT, requires_grad=True) for k, v in weights.items()}
    lat_t, noise_t = torch.tensor(latent, dtype=ref.DT), torch.tensor(noise, dtype=ref.DT)
    sigma_t, ctx_t = torch.tensor(sigma, dtype=ref.DT), torch.tensor(context, dtype=ref.DT)
    pred, loss, loss_w = ref.flow_loss(P, cfg, lat_t, noise_t, sigma_t, ctx_t, shift=2.5)
    loss_w.backward()

    e = rel_err(got['pred'], pred.detach().numpy())
    report(e < TOL, name + ' pred', 'rel %.2e' % e)
    e = abs(float(got['loss'][0]) - loss.item()) / abs(loss.item())
    report(e < TOL, name + ' loss', 'ours %.9g ref %.9g rel %.2e' % (float(got['loss'][0]), loss.item(), e))
    e = abs(float(got['loss_weighted'][0]) - loss_w.item()) / abs(loss_w.item())
    report(e < TOL, name + ' loss_weighted', 'rel %.2e' % e)
    worst, worst_name, missing = 0.0, '', []
    for k in shapes:
        g = got.get('grad.' + k)
        if g is None:
            missing.append(k)
            continue
        if list(g.shape) != shapes[k]:
            missing.append(k + ' (shape %s)' % list(g.shape))
            continue
        e = rel_err(g, P[k].grad.numpy())
        if e > worst:
            worst, worst_name = e, k
    report(not missing, name + ' every gradient present', ', '.join(missing[:5]))
    report(worst < TOL, name + ' gradients', 'worst rel %.2e (%s) over %d tensors' % (worst, worst_name, len(shapes)))


def main():
    torch.set_num_threads(1)
    base = {'dim': 48, 'ffn_dim': 80, 'num_heads': 2, 'num_layers': 2, 'freq_dim': 32, 'text_dim': 20,
            'text_len': 7, 'in_dim': 4, 'out_dim': 4, 'patch_size': [1, 2, 2], 'eps': 1e-6}
    run_case('tiny', base, B=2, lat_shape=(3, 4, 6), seed=1)
    other = dict(base, dim=64, num_heads=4, num_layers=1, patch_size=[2, 2, 1], in_dim=3, out_dim=3, text_len=5)
    run_case('patch-2x2x1', other, B=1, lat_shape=(4, 2, 5), seed=2)
    print('%d passed, %d failed' % (passed, failed))
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
