/* The report's plots: training (and validation) loss over steps, and tokens/s/GPU of the
 * measured steps, one series per run, as SVG; PNG beside them when rsvg-convert is installed. */
#include <math.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "error.h"
#include "fsutil.h"
#include "log.h"
#include "report.h"
#include "svgplot.h"

extern char **environ;

/* The converter on PATH, or false. */
static bool find_program(const char *name, char *buf, size_t n) {
    const char *path = getenv("PATH");
    if (!path) return false;
    while (*path) {
        size_t len = strcspn(path, ":");
        if (len && (size_t)snprintf(buf, n, "%.*s/%s", (int)len, path, name) < n && access(buf, X_OK) == 0) return true;
        path += len + (path[len] == ':');
    }
    return false;
}

/* svg -> png with rsvg-convert, to a temporary name and renamed, like every output. */
static int svg_to_png(const char *converter, const char *svg, const char *png) {
    char tmp[WAN_PATH_MAX + 32];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", png, (int)getpid());
    char *argv[] = {(char *)converter, "-f", "png", "-o", tmp, (char *)svg, NULL};
    pid_t pid;
    int err = posix_spawn(&pid, converter, NULL, NULL, argv, environ);
    if (err) return wan_fail(WAN_ERR_RUNTIME, "starting %s: %s", converter, strerror(err));
    int status;
    if (waitpid(pid, &status, 0) < 0) return wan_fail_errno(WAN_ERR_RUNTIME, "waiting for %s", converter);
    if (!WIFEXITED(status) || WEXITSTATUS(status)) {
        unlink(tmp);
        return wan_fail(WAN_ERR_RUNTIME, "%s failed converting %s", converter, svg);
    }
    WAN_TRY(wan_fsync_path(tmp));
    return wan_rename_durable(tmp, png);
}

static int write_plot(const char *dir, const char *name, const wan_svg_plot *p, const wan_svg_series *s, int ns,
                      const char *converter, bool *png_written) {
    char svg[WAN_PATH_MAX], png[WAN_PATH_MAX], file[64];
    snprintf(file, sizeof file, "%s.svg", name);
    WAN_TRY(wan_path_join(svg, sizeof svg, dir, file));
    WAN_TRY(wan_svgplot_write(svg, p, s, ns));
    wan_info("wrote %s", svg);
    if (!converter) return 0;
    snprintf(file, sizeof file, "%s.png", name);
    WAN_TRY(wan_path_join(png, sizeof png, dir, file));
    if (svg_to_png(converter, svg, png)) {
        wan_warn("no PNG for %s: %s", svg, wan_errmsg()); /* the SVG is the plot; PNG is a convenience */
        wan_error_clear();
        return 0;
    }
    wan_info("wrote %s", png);
    *png_written = true;
    return 0;
}

int wan_report_write_plots(const wan_report_run *runs, int nruns, const char *dir, bool *png_written) {
    *png_written = false;
    if (nruns < 1) return wan_fail(WAN_ERR_USAGE, "no runs to plot");
    WAN_TRY(wan_mkdir_p(dir));
    char converter[WAN_PATH_MAX];
    bool have_converter = find_program("rsvg-convert", converter, sizeof converter);
    if (!have_converter) wan_info("rsvg-convert is not installed: SVG plots only (apt-get install librsvg2-bin)");

    /* per run: x and y for training loss, validation loss and throughput */
    size_t nseries = 0;
    for (int i = 0; i < nruns; i++) nseries += runs[i].nevals > 0 ? 2 : 1;
    wan_svg_series *loss = calloc(nseries, sizeof *loss), *rate = calloc((size_t)nruns, sizeof *rate);
    double **bufs = calloc((size_t)nruns * 6, sizeof *bufs);
    char (*names)[WAN_PATH_MAX + 16] = calloc((size_t)nruns, sizeof *names);
    int rc = 0, nloss = 0;
    if (!loss || !rate || !bufs || !names) rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
    for (int i = 0; !rc && i < nruns; i++) {
        const wan_report_run *r = &runs[i];
        int n = r->nsteps, ne = r->nevals;
        double **b = &bufs[6 * i];
        for (int k = 0; k < 6; k++) b[k] = malloc((size_t)(2 * n + ne + 1) * sizeof(double));
        for (int k = 0; k < 6; k++)
            if (!b[k]) rc = wan_fail(WAN_ERR_RUNTIME, "out of memory");
        if (rc) break;
        int nused = 0, last_used = 0;
        for (int k = 0; k < n; k++) {
            const wan_report_step *s = &r->steps[k];
            b[0][k] = s->step;
            b[1][k] = s->loss;
            if (s->use != WAN_STEP_USED) continue;
            if (nused && s->step != last_used + 1) { /* skipped steps: break the line, draw no slope */
                b[4][nused] = s->step - 0.5;
                b[5][nused++] = NAN;
            }
            b[4][nused] = s->step;
            b[5][nused++] = (double)s->tokens / s->step_time / r->gpus;
            last_used = s->step;
        }
        const char *color = wan_svgplot_color(i); /* one colour per run in both plots */
        for (int k = 0; k < ne; k++) {
            b[2][k] = r->evals[k].step;
            b[3][k] = r->evals[k].loss;
        }
        loss[nloss++] = (wan_svg_series){r->dir, b[0], b[1], n, false, false, color};
        if (ne) {
            snprintf(names[i], sizeof names[i], "%s (validation)", r->dir);
            loss[nloss++] = (wan_svg_series){names[i], b[2], b[3], ne, true, true, color};
        }
        rate[i] = (wan_svg_series){r->dir, b[4], b[5], nused, false, false, color};
    }
    if (!rc) {
        wan_svg_plot p = {"Loss", "step", "flow-matching loss (MSE, weighted)", 0, 0, false};
        rc = write_plot(dir, "loss", &p, loss, nloss, have_converter ? converter : NULL, png_written);
    }
    if (!rc) {
        wan_svg_plot p = {"Throughput (warm-up, checkpoint and evaluation steps left out)", "step",
                          "tokens / s / GPU", 0, 0, true};
        rc = write_plot(dir, "throughput", &p, rate, nruns, have_converter ? converter : NULL, png_written);
    }
    for (int i = 0; bufs && i < nruns * 6; i++) free(bufs[i]);
    free(bufs);
    free(loss);
    free(rate);
    free(names);
    return rc;
}
