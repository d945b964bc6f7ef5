/* ckpt_compare A B [--kinds model,master,adam_m,adam_v] [--tol T]: read every tensor of two
 * checkpoints (any layouts) as full tensors and compare them; the relative difference of a
 * tensor is ||a - b|| / ||b|| (Adam turns rounding-level gradient differences of near-zero
 * elements into updates of order lr, so an element-wise maximum would measure Adam, not us).
 * Exits 1 when the worst exceeds the tolerance, a tensor is missing on one side, or shapes
 * differ. Also prints the worst element-wise difference relative to the tensor's largest
 * element, for information. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt.h"
#include "error.h"

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: ckpt_compare A B [--kinds model,master,...] [--tol T]\n");
        return 2;
    }
    const char *kinds = "model,master,adam_m,adam_v";
    double tol = 1e-5;
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--kinds") && i + 1 < argc) kinds = argv[++i];
        else if (!strcmp(argv[i], "--tol") && i + 1 < argc) tol = atof(argv[++i]);
    }
    wan_ckpt a, b;
    if (wan_ckpt_open(&a, argv[1]) || wan_ckpt_open(&b, argv[2])) {
        fprintf(stderr, "ckpt_compare: %s\n", wan_errmsg());
        return 1;
    }
    double worst = 0, worst_elem = 0;
    char worst_name[160] = "";
    int compared = 0, bad = 0;
    for (int i = 0; i < a.nt; i++) {
        const wan_ckpt_tensor *ta = &a.t[i];
        if (!strstr(kinds, wan_ckpt_kind_names[ta->kind])) continue;
        const wan_ckpt_tensor *tb = wan_ckpt_find(&b, ta->name, ta->kind);
        if (!tb || tb->ndim != ta->ndim || memcmp(tb->shape, ta->shape, sizeof ta->shape[0] * (size_t)ta->ndim)) {
            fprintf(stderr, "ckpt_compare: %s (%s) missing or of another shape in %s\n", ta->name,
                    wan_ckpt_kind_names[ta->kind], argv[2]);
            bad++;
            continue;
        }
        int64_t n = wan_numel(ta->ndim, ta->shape);
        float *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y);
        wan_box box;
        memset(&box, 0, sizeof box);
        memcpy(box.shape, ta->shape, sizeof box.shape);
        if (wan_ckpt_read_box(&a, ta, &box, x, WAN_F32) || wan_ckpt_read_box(&b, tb, &box, y, WAN_F32)) {
            fprintf(stderr, "ckpt_compare: %s\n", wan_errmsg());
            return 1;
        }
        double md = 0, mb = 0, dd = 0, bb = 0;
        for (int64_t k = 0; k < n; k++) {
            double d = (double)x[k] - (double)y[k];
            if (fabs(d) > md || isnan(d)) md = isnan(d) ? INFINITY : fabs(d);
            if (fabs(y[k]) > mb) mb = fabs(y[k]);
            dd += d * d;
            bb += (double)y[k] * y[k];
        }
        double rel = bb > 0 ? sqrt(dd / bb) : sqrt(dd);
        if (isnan(rel)) rel = INFINITY;
        double elem = mb > 0 ? md / mb : md;
        if (elem > worst_elem) worst_elem = elem;
        if (rel > worst) {
            worst = rel;
            snprintf(worst_name, sizeof worst_name, "%s (%s)", ta->name, wan_ckpt_kind_names[ta->kind]);
        }
        compared++;
        free(x);
        free(y);
    }
    printf("compared %d tensors: worst relative difference %.3e in %s (element-wise %.3e)\n", compared, worst,
           worst_name, worst_elem);
    int fail = bad || compared == 0 || !(worst <= tol);
    if (a.step != b.step) {
        printf("steps differ: %d vs %d\n", a.step, b.step);
        fail = 1;
    }
    wan_ckpt_close(&a);
    wan_ckpt_close(&b);
    return fail;
}
