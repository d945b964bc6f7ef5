"""Bytes each rank sends per training step, as the parallel design predicts them, against what
wan-train counted (the "comm_bytes" of its step log). Usage: comm_volume.py [--check] RUN_DIR...

The prediction is written from the design (model_block.c's comment: column-parallel inputs
gathered over tp with sequence parallelism, row-parallel outputs reduced or reduce-scattered,
q/k norm sums all-reduced, the context-parallel K/V ring, ZeRO-1 over dp x cp), not from the
code, and counts what a ring algorithm sends: all-reduce 2 (k-1)/k of the bytes,
reduce-scatter and all-gather (k-1) chunks, a ring shift one message."""
import json
import sys

ALIGN = 64


def param_total(m, t, k, pp=1):
    """Elements of a rank's flat parameter buffer on pipeline stage 0 (the embeddings and the
    first num_layers / pp blocks; the head with pp = 1): tensors 64-aligned except inside fused
    q|k|v and k|v groups, padded to a multiple of 64 * ZeRO shards."""
    D, F, L = m['dim'], m['ffn_dim'], m['num_layers'] // pp
    pv = m['patch_size'][0] * m['patch_size'][1] * m['patch_size'][2]
    Dl, Fl = D // t, F // t
    ts = []

    def add(n, fuse=False):
        ts.append((n, fuse))
    add(D * m['in_dim'] * pv); add(D)
    for n in (m['text_dim'], D):
        add(D * n); add(D)
    for n in (m['freq_dim'], D):
        add(D * n); add(D)
    add(6 * D * D); add(6 * D)
    for _ in range(L):
        add(6 * D)
        add(Dl * D, True); add(Dl * D, True); add(Dl * D)
        add(Dl, True); add(Dl, True); add(Dl)
        add(D * Dl); add(D); add(Dl); add(Dl); add(D); add(D)
        add(Dl * D); add(Dl)
        add(Dl * D, True); add(Dl * D); add(Dl, True); add(Dl)
        add(D * Dl); add(D); add(Dl); add(Dl)
        add(Fl * D); add(Fl); add(D * Fl); add(D)
    if pp == 1:
        add(m['out_dim'] * pv * D); add(m['out_dim'] * pv); add(2 * D)
    off, fused = 0, False
    for n, f in ts:
        if not fused:
            off = (off + ALIGN - 1) // ALIGN * ALIGN
        off += n
        fused = f
    unit = ALIGN * k
    return (off + unit - 1) // unit * unit


def tp_replicated_sizes(m, pp=1):
    """Tensors tensor parallelism replicates on pipeline stage 0, except the text embedding
    (reduced through its input gradient): their gradients are all-reduced over tp with
    sequence parallelism."""
    D, L = m['dim'], m['num_layers'] // pp
    pv = m['patch_size'][0] * m['patch_size'][1] * m['patch_size'][2]
    sizes = [D * m['in_dim'] * pv, D, D * m['freq_dim'], D, D * D, D, 6 * D * D, 6 * D]
    for _ in range(L):
        sizes += [6 * D, D, D, D, D, D]  # modulation, o.bias, norm3 w/b, cross o.bias, ffn.2.bias
    if pp == 1:
        sizes += [m['out_dim'] * pv * D, m['out_dim'] * pv, 2 * D]
    return sizes


def predict(cfg, world, seq_tokens, act=4, param=4):
    """Bytes rank 0 sends: tp, cp and dp rank 0 of pipeline stage 0."""
    m, p, tr = cfg['model'], cfg['parallel'], cfg['train']
    t, c, pp = p['tp'], p['cp'], p['pp']
    sp = p['sp'] and t > 1
    dp = world // (t * c * pp)
    k = dp * c
    B, L = tr['mbs'], m['text_len']
    D = m['dim']
    Dl = D // t
    split = c * (t if sp else 1)
    S_cp = (seq_tokens + split - 1) // split * split // c
    Tf = B * S_cp
    T = Tf // t if sp else Tf
    BL = B * L
    nmicro = tr['gbs'] // (tr['mbs'] * dp)
    fwd_passes = 2 if tr['recompute'] else 1
    # a kept attention output: the backward's rebuild of a block skips the K/V ring
    ring_passes = 2 if tr['recompute'] and tr.get('recompute_attention', False) else 1
    layers = m['num_layers'] // pp  # blocks of this stage
    ar = lambda n, g: 2 * (g - 1) * n // g  # all-reduce of n bytes over g ranks (per call)
    out = {'tp': 0, 'cp': 0, 'dp': 0, 'pp': 0, 'dpcp': 0, 'mp': 0, 'world': 0}
    if t > 1:
        gather = (t - 1) * T * D * act if sp else 0
        rows = (t - 1) * T * D * 4 if sp else ar(Tf * D * 4, t)
        norms = ar(2 * Tf * 4, t) + ar((Tf + BL) * 4, t)
        block_fwd = 3 * gather + 3 * rows + norms
        block_bwd = 3 * gather + 3 * rows + norms
        micro = layers * (fwd_passes * block_fwd + block_bwd) + ar(BL * D * 4, t)
        out['tp'] = nmicro * micro
        if sp:
            out['tp'] += sum(ar(n * 4, t) for n in tp_replicated_sizes(m, pp))
    if c > 1:
        msg = 2 * Tf * Dl * act
        out['cp'] = nmicro * layers * (ring_passes * (c - 1) + (2 * c - 1)) * msg
    if k > 1:
        chunk = param_total(m, t, k, pp) // k
        out['dpcp'] = (k - 1) * chunk * 4 + (k - 1) * chunk * param + (k - 1) * 8
    if pp > 1:
        # stage 0 sends each micro-batch's residual stream, time embedding e and its
        # projection e0 (fp32) and the text context (activation dtype) to stage 1
        out['pp'] = nmicro * ((T * D + B * D + 6 * B * D) * 4 + BL * D * act)
    if t * pp > 1:
        out['mp'] = (t * pp - 1) * 8
    if world > 1:
        out['world'] = ar(8, world) + ar(4, world)
    return out


def main():
    args = [a for a in sys.argv[1:] if a != '--check']
    check = '--check' in sys.argv[1:]
    bad = 0
    print('| run | group | measured bytes/step | predicted | ratio |')
    print('|-----|-------|--------------------:|----------:|------:|')
    for run in args:
        header, step = None, None
        for r in map(json.loads, open(run + '/steps.jsonl')):
            if r['type'] == 'header':
                header = r
            elif r['type'] == 'step' and not r['ckpt'] and not r['eval']:
                step = r
        if step is None:
            print('%s: no step without a checkpoint or evaluation' % run, file=sys.stderr)
            bad += 1
            continue
        pred = predict(header['config'], header['world_size'], step['seq_len'])
        for g in ('tp', 'cp', 'pp', 'dpcp', 'mp', 'world'):
            meas = step['comm_bytes'][g]
            if meas == 0 and pred[g] == 0:
                continue
            ratio = meas / pred[g] if pred[g] else float('inf')
            print('| %s | %s | %d | %d | %.4f |' % (run.rstrip('/').split('/')[-1], g, meas, pred[g], ratio))
            bad += meas != pred[g]
    if check and bad:
        print('%d group(s) differ from the prediction' % bad, file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
