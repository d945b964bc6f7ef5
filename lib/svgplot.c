#include "svgplot.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fsutil.h"

/* Okabe-Ito colours: distinguishable with the common colour-vision deficiencies. */
static const char *palette[] = {"#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000"};
#define NCOLORS ((int)(sizeof palette / sizeof palette[0]))

const char *wan_svgplot_color(int i) { return palette[(i % NCOLORS + NCOLORS) % NCOLORS]; }

int wan_svgplot_ticks(double lo, double hi, int target, double *ticks, int max, double *step_out) {
    if (!(hi > lo)) {
        double pad = fabs(lo) > 0 ? fabs(lo) * 0.05 : 1;
        lo -= pad;
        hi += pad;
    }
    if (target < 2) target = 2;
    double raw = (hi - lo) / (target - 1);
    double mag = pow(10, floor(log10(raw)));
    double f = raw / mag, step;
    if (f <= 1) step = mag;
    else if (f <= 2) step = 2 * mag;
    else if (f <= 5) step = 5 * mag;
    else step = 10 * mag;
    double first = floor(lo / step) * step, last = ceil(hi / step) * step;
    int n = 0;
    for (int k = 0; n < max; k++) {
        double t = first + k * step;
        if (t > last + step * 1e-9) break;
        ticks[n++] = fabs(t) < step * 1e-9 ? 0 : t; /* no "-0" */
    }
    *step_out = step;
    return n;
}

void wan_svgplot_tick_label(double v, double step, char *buf, int n) {
    const char *suffix = "";
    double a = fabs(v) > fabs(step) ? fabs(v) : fabs(step);
    if (a >= 1e6 && step >= 1e5) {
        v /= 1e6;
        step /= 1e6;
        suffix = "M";
    } else if (a >= 1e4 && step >= 1e3) {
        v /= 1e3;
        step /= 1e3;
        suffix = "k";
    }
    int decimals = 0; /* as many as the step needs: 2.5 -> 1, 0.05 -> 2 */
    while (decimals < 9) {
        double scaled = fabs(step) * pow(10, decimals);
        if (fabs(scaled - round(scaled)) < 1e-6 * (scaled > 1 ? scaled : 1)) break;
        decimals++;
    }
    snprintf(buf, (size_t)n, "%.*f%s", decimals, v, suffix);
}

static void xml_text(FILE *f, const char *s) {
    for (; s && *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

/* The data's range over finite points. Returns false when there is none. */
static bool data_range(const wan_svg_series *s, int ns, double *x0, double *x1, double *y0, double *y1) {
    bool any = false;
    for (int i = 0; i < ns; i++)
        for (int k = 0; k < s[i].n; k++) {
            double x = s[i].x[k], y = s[i].y[k];
            if (!isfinite(x) || !isfinite(y)) continue;
            if (!any) {
                *x0 = *x1 = x;
                *y0 = *y1 = y;
                any = true;
            }
            if (x < *x0) *x0 = x;
            if (x > *x1) *x1 = x;
            if (y < *y0) *y0 = y;
            if (y > *y1) *y1 = y;
        }
    return any;
}

int wan_svgplot_render(const wan_svg_plot *p, const wan_svg_series *s, int ns, char **out) {
    int width = p->width > 0 ? p->width : 800, height = p->height > 0 ? p->height : 450;
    const int left = 90, right = 30, top = 50, bottom = 60, legend_row = 20;
    int pw = width - left - right, ph = height - top - bottom;
    int total_h = height + 10 + ns * legend_row;

    double x0 = 0, x1 = 1, y0 = 0, y1 = 1;
    bool any = data_range(s, ns, &x0, &x1, &y0, &y1);
    if (p->y_from_zero) {
        if (y0 > 0) y0 = 0;
        if (y1 < 0) y1 = 0;
    }
    double xt[32], yt[32], xstep, ystep;
    int nx = wan_svgplot_ticks(x0, x1, 8, xt, 32, &xstep);
    int ny = wan_svgplot_ticks(y0, y1, 6, yt, 32, &ystep);
    /* the axes span the outer ticks */
    x0 = xt[0];
    x1 = xt[nx - 1];
    y0 = yt[0];
    y1 = yt[ny - 1];

    size_t len;
    FILE *f = open_memstream(out, &len);
    if (!f) return wan_fail_errno(WAN_ERR_RUNTIME, "open_memstream");
#define PX(x) (left + ((x) - x0) / (x1 - x0) * pw)
#define PY(y) (top + ph - ((y) - y0) / (y1 - y0) * ph)
    fprintf(f,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"%d\" height=\"%d\" "
            "viewBox=\"0 0 %d %d\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" font-size=\"13\">\n"
            "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"white\"/>\n",
            width, total_h, width, total_h, width, total_h);
    fprintf(f, "<text x=\"%d\" y=\"28\" text-anchor=\"middle\" font-size=\"16\" font-weight=\"bold\">", width / 2);
    xml_text(f, p->title);
    fputs("</text>\n", f);

    /* grid and tick labels */
    fputs("<g stroke=\"#dddddd\" stroke-width=\"1\">\n", f);
    for (int i = 0; i < nx; i++)
        fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\"/>\n", PX(xt[i]), top, PX(xt[i]), top + ph);
    for (int i = 0; i < ny; i++)
        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\"/>\n", left, PY(yt[i]), left + pw, PY(yt[i]));
    fputs("</g>\n", f);
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" stroke=\"#333333\"/>\n", left, top,
            pw, ph);
    fputs("<g fill=\"#333333\">\n", f);
    for (int i = 0; i < nx; i++) {
        char lab[48];
        wan_svgplot_tick_label(xt[i], xstep, lab, sizeof lab);
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%s</text>\n", PX(xt[i]), top + ph + 18, lab);
    }
    for (int i = 0; i < ny; i++) {
        char lab[48];
        wan_svgplot_tick_label(yt[i], ystep, lab, sizeof lab);
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", left - 8, PY(yt[i]) + 4, lab);
    }
    fputs("</g>\n", f);
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">", left + pw / 2, top + ph + 42);
    xml_text(f, p->xlabel);
    fputs("</text>\n", f);
    fprintf(f, "<text x=\"20\" y=\"%d\" text-anchor=\"middle\" transform=\"rotate(-90 20 %d)\">", top + ph / 2,
            top + ph / 2);
    xml_text(f, p->ylabel);
    fputs("</text>\n", f);
    if (!any)
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" fill=\"#999999\">no data</text>\n", left + pw / 2,
                top + ph / 2);

    /* series: a polyline per finite stretch, optional dots */
    for (int i = 0; i < ns; i++) {
        const char *color = s[i].color ? s[i].color : wan_svgplot_color(i);
        const char *dash = s[i].dashed ? " stroke-dasharray=\"6 4\"" : "";
        bool open = false;
        int run = 0;
        for (int k = 0; k <= s[i].n; k++) {
            bool ok = k < s[i].n && isfinite(s[i].x[k]) && isfinite(s[i].y[k]);
            if (ok && !open) {
                fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\"%s points=\"", color, dash);
                open = true;
                run = 0;
            }
            if (ok) fprintf(f, "%s%.1f,%.1f", run++ ? " " : "", PX(s[i].x[k]), PY(s[i].y[k]));
            if (!ok && open) {
                fputs("\"/>\n", f);
                open = false;
            }
        }
        for (int k = 0; k < s[i].n; k++) {
            bool ok = isfinite(s[i].x[k]) && isfinite(s[i].y[k]);
            bool prev = k > 0 && isfinite(s[i].x[k - 1]) && isfinite(s[i].y[k - 1]);
            bool next = k + 1 < s[i].n && isfinite(s[i].x[k + 1]) && isfinite(s[i].y[k + 1]);
            bool lonely = !prev && !next; /* a single finite point draws no line: mark it */
            if (ok && (s[i].markers || lonely))
                fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", PX(s[i].x[k]), PY(s[i].y[k]),
                        color);
        }
    }

    /* legend: one row per series below the axes */
    for (int i = 0; i < ns; i++) {
        int y = height + i * legend_row;
        fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"%s\" stroke-width=\"2\"%s/>\n", left, y,
                left + 30, y, s[i].color ? s[i].color : wan_svgplot_color(i), s[i].dashed ? " stroke-dasharray=\"6 4\"" : "");
        fprintf(f, "<text x=\"%d\" y=\"%d\">", left + 38, y + 4);
        xml_text(f, s[i].name);
        fputs("</text>\n", f);
    }
    fputs("</svg>\n", f);
#undef PX
#undef PY
    if (fclose(f)) {
        free(*out);
        *out = NULL;
        return wan_fail_errno(WAN_ERR_RUNTIME, "rendering the plot");
    }
    return 0;
}

int wan_svgplot_write(const char *path, const wan_svg_plot *p, const wan_svg_series *s, int ns) {
    char *svg;
    WAN_TRY(wan_svgplot_render(p, s, ns, &svg));
    int rc = wan_write_file_atomic(path, svg, strlen(svg));
    free(svg);
    return rc;
}
