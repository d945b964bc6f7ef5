#!/usr/bin/env python3
"""Writes the synthetic step logs behind wan-report's golden files (tests/golden/report_*).

Each log follows the contract in lib/steplog.h with step times chosen so that the expected
numbers can be worked out by hand (see the comments). Run from the repository root:
    /usr/bin/python3 tests/golden/report_make_runs.py
"""
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))

WAN14B = {"dim": 5120, "ffn_dim": 13824, "num_heads": 40, "num_layers": 40, "text_len": 512, "text_dim": 4096,
          "freq_dim": 256, "in_dim": 16, "out_dim": 16, "patch_size": [1, 2, 2]}
TINY = {"dim": 64, "ffn_dim": 128, "num_heads": 2, "num_layers": 2, "text_len": 16, "text_dim": 32,
        "freq_dim": 256, "in_dim": 16, "out_dim": 16, "patch_size": [1, 2, 2]}


def header(world, device, resumed_from, model, t):
    return {"type": "header", "format": 1, "program": "wan-train", "version": "0.1.0", "git": "abc1234",
            "time": t, "world_size": world, "device": device, "resumed_from": resumed_from,
            "config": {"model": model}}


def step(n, step_time, loss, gpus, device, layout, model, ckpt=False, evaluation=False):
    samples, seq = layout["gbs"], layout["seq_len"]
    return {"type": "step", "step": n, "time": 1764086645.0 + 30 * n, "step_time": step_time, "loss": loss,
            "grad_norm": 1.0, "lr": 1e-4, "samples": samples, "tokens": samples * seq, "seq_len": seq,
            "gpus": gpus, "device": device, "layout": layout, "model": model, "ckpt": ckpt, "eval": evaluation,
            "mem_peak": 123456789, "data_epoch": 0}


def write(name, lines):
    os.makedirs(os.path.join(HERE, name), exist_ok=True)
    with open(os.path.join(HERE, name, "steps.jsonl"), "w") as f:
        for line in lines:
            f.write(json.dumps(line, separators=(",", ":")) + "\n")


def h100():
    # 8 x H100, Wan 2.1 14B, 37440 tokens, CP 4. Measured (warm-up 3): steps 4-7 of the first
    # segment (8 saved a checkpoint) and 12-15 after the resume from step 8 (9-11 are warm-up
    # again; the first segment's 9-12 at 99 s are replaced). Times sum to 160 s over 8 steps:
    # 8 * 37440 tokens / 20 s / 8 GPUs = 1872.00 tokens/s/GPU.
    dev, gpus = "NVIDIA H100 80GB HBM3", 8
    lay = {"gbs": 8, "mbs": 1, "seq_len": 37440, "fsdp": 0, "tp": 1, "sp": 0, "pp": 1, "cp": 4, "vp": 0, "ep": 0,
           "dp": 2}
    L = [header(gpus, dev, 0, WAN14B, "2026-11-25T16:00:00Z")]
    for n, t in [(1, 95.0), (2, 40.0), (3, 25.0), (4, 20.0), (5, 19.5), (6, 20.5), (7, 20.0)]:
        L.append(step(n, t, 0.60 - 0.01 * n, gpus, dev, lay, WAN14B))
    L.append(step(8, 48.0, 0.52, gpus, dev, lay, WAN14B, ckpt=True))
    for n in (9, 10, 11, 12):
        L.append(step(n, 99.0, 0.9, gpus, dev, lay, WAN14B, evaluation=(n == 10)))
        if n == 10:
            L.append({"type": "eval", "step": 10, "loss": 0.95, "sigmas": [0.1, 0.5, 0.9],
                      "loss_by_sigma": [0.9, 0.95, 1.0], "samples": 8})
    L.append(header(gpus, dev, 8, WAN14B, "2026-11-25T17:00:00Z"))
    for n, t in [(9, 60.0), (10, 30.0), (11, 22.0), (12, 20.0), (13, 19.6), (14, 20.4), (15, 20.0)]:
        L.append(step(n, t, 0.60 - 0.01 * n, gpus, dev, lay, WAN14B, evaluation=(n == 10)))
        if n == 10:
            L.append({"type": "eval", "step": 10, "loss": 0.55, "sigmas": [0.1, 0.5, 0.9],
                      "loss_by_sigma": [0.5, 0.55, 0.6], "samples": 8})
    write("report_run_h100", L)


def gb200():
    # 32 x GB200 in the reference row's layout. 5 warm-up-free steps after 3 warm-up, one eval
    # step skipped; every measured step takes 64 * 37440 / (32 * 4747.17) = 15.773608... s, so
    # the row reads 4747.17 tokens/s/GPU like the reference, and 787.59 TFLOP/s at the
    # reference's implied 1.65907e11 FLOPs/token.
    dev, gpus = "NVIDIA GB200", 32
    lay = {"gbs": 64, "mbs": 1, "seq_len": 37440, "fsdp": 0, "tp": 1, "sp": 0, "pp": 1, "cp": 4, "vp": 0, "ep": 0,
           "dp": 8}
    t = 64 * 37440 / (32 * 4747.17)
    L = [header(gpus, dev, 0, WAN14B, "2026-11-25T16:00:00Z")]
    for n in range(1, 10):
        warm = {1: 50.0, 2: 30.0, 3: 18.0}
        L.append(step(n, warm.get(n, 21.0 if n == 6 else t), 0.5 - 0.01 * n, gpus, dev, lay, WAN14B,
                      evaluation=(n == 6)))
    write("report_run_gb200", L)


def cpu():
    # The embedded tiny model on 2 CPU ranks: gbs 4 x 48 tokens; measured steps 4-8 at 0.5, 0.4,
    # 0.6, 0.5, 0.5 s: 192 * 5 / 2.5 s / 2 = 192.00 tokens/s/GPU; no peak known (no MFU).
    dev, gpus = "CPU (1 threads)", 2
    lay = {"gbs": 4, "mbs": 1, "seq_len": 48, "fsdp": 0, "tp": 1, "sp": 0, "pp": 1, "cp": 1, "vp": 0, "ep": 0,
           "dp": 2}
    L = [header(gpus, dev, 0, TINY, "2026-11-25T16:00:00Z")]
    for n, t in [(1, 2.0), (2, 1.0), (3, 0.7), (4, 0.5), (5, 0.4), (6, 0.6), (7, 0.5), (8, 0.5)]:
        L.append(step(n, t, 1.2 - 0.05 * n, gpus, dev, lay, TINY))
    write("report_run_cpu", L)


if __name__ == "__main__":
    h100()
    gb200()
    cpu()
