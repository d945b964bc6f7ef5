/* The step log: <train.run_dir>/steps.jsonl, one JSON object per line, written by rank 0 of
 * wan-train and read by wan-report. Lines are appended and flushed as they happen; a resumed
 * run appends a new header and then its steps (a step number seen again replaces the earlier
 * line: the run went back to a checkpoint).
 *
 * {"type":"header","format":1,"program":"wan-train","version":"0.1.0","git":"abc1234",
 *  "time":"2026-11-25T16:04:05Z","world_size":2,"device":"CPU (1 threads)",
 *  "resumed_from":0, "config":{"model":{"dim":64,...},"parallel":{...},"train":{...},...}}
 *
 * {"type":"step","step":1,"time":1764086645.123,"step_time":0.532,"loss":0.41,
 *  "grad_norm":1.2,"lr":0.001,"samples":4,"tokens":192,"seq_len":48,"gpus":2,
 *  "device":"CPU (1 threads)",
 *  "layout":{"gbs":4,"mbs":1,"seq_len":48,"fsdp":0,"tp":1,"sp":0,"pp":1,"cp":1,"vp":0,"ep":0,"dp":2},
 *  "model":{"dim":64,"ffn_dim":128,"num_heads":2,"num_layers":2,"text_len":16,"text_dim":32,
 *           "freq_dim":256,"in_dim":16,"out_dim":16,"patch_size":[1,2,2]},
 *  "ckpt":false,"eval":false,"mem_peak":123456,"data_epoch":0,
 *  "comm_bytes":{"tp":0,"cp":0,"dp":0,"pp":0,"dpcp":4096,"mp":0,"world":8}}
 *
 *   step       optimizer step just completed (1-based)
 *   time       unix time at the end of the step
 *   step_time  wall seconds of the whole step, including a checkpoint save or an evaluation
 *              done in it (then "ckpt" / "eval" is true, and reports skip the step)
 *   samples, tokens  in the global batch (tokens = samples * seq_len, video tokens only)
 *   gpus       ranks of the run (GPUs, or CPU processes)
 *   mem_peak   bytes, peak backend memory on rank 0
 *   comm_bytes bytes rank 0 sent in the step's training work per group (the volume a ring
 *              algorithm sends; checkpoint and evaluation traffic excluded)
 *
 * {"type":"eval","step":10,"loss":0.31,"sigmas":[0.1,0.3,0.5,0.7,0.9],
 *  "loss_by_sigma":[0.2,0.25,0.3,0.35,0.4],"samples":8}
 */
#ifndef WAN_STEPLOG_H
#define WAN_STEPLOG_H

#include <stdbool.h>
#include <stdio.h>

#include "config.h"

typedef struct {
    FILE *f;
} wan_steplog;

typedef struct {
    int step;
    double step_time, loss, grad_norm, lr;
    int samples;
    long long tokens;
    int seq_len, gpus, dp;
    bool ckpt, eval;
    long long mem_peak;
    long long data_epoch;
    long long comm_bytes[7]; /* tp, cp, dp, pp, dpcp, mp, world */
} wan_step_record;

int wan_steplog_open(wan_steplog *l, const char *run_dir, const wan_config *cfg, int world_size,
                     const char *device, int resumed_from);
int wan_steplog_step(wan_steplog *l, const wan_config *cfg, const char *device, const wan_step_record *r);
int wan_steplog_eval(wan_steplog *l, int step, double mean, const double *sigmas, const double *losses, int n,
                     int samples);
void wan_steplog_close(wan_steplog *l);

#endif
