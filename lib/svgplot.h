/* A small SVG line-plot writer: one plot, several series, linear axes with "nice" ticks (1, 2,
 * 5 x 10^k), grid, axis labels with units, a title and a legend below the axes. Plain SVG 1.1
 * that browsers, rsvg-convert and Inkscape all draw the same way. */
#ifndef WAN_SVGPLOT_H
#define WAN_SVGPLOT_H

#include <stdbool.h>

typedef struct {
    const char *name;     /* legend label */
    const double *x, *y;  /* n points; a non-finite y breaks the line there */
    int n;
    bool dashed;          /* e.g. validation curves beside training curves */
    bool markers;         /* a dot at every point (sparse series) */
    const char *color;    /* "#rrggbb"; NULL = wan_svgplot_color(position in the list) */
} wan_svg_series;

typedef struct {
    const char *title;
    const char *xlabel, *ylabel; /* with units, e.g. "step", "tokens / s / GPU" */
    int width, height;           /* of the axes' frame and labels, pixels; 0 = 800 x 450 */
    bool y_from_zero;            /* extend the y range to 0 (rates) */
} wan_svg_plot;

/* The plot as a malloc'd NUL-terminated string. */
int wan_svgplot_render(const wan_svg_plot *p, const wan_svg_series *s, int ns, char **out);
/* Render and write atomically to path. */
int wan_svgplot_write(const char *path, const wan_svg_plot *p, const wan_svg_series *s, int ns);

/* The i-th colour of the palette (cycles), for giving related series one colour. */
const char *wan_svgplot_color(int i);

/* Nice ticks covering [lo, hi]: about `target` of them, multiples of *step (1, 2 or 5 x 10^k),
 * the first <= lo and the last >= hi. Returns the count (at most max). */
int wan_svgplot_ticks(double lo, double hi, int target, double *ticks, int max, double *step);
/* A tick label: enough decimals for step, thousands as "k" / millions as "M" when large. */
void wan_svgplot_tick_label(double v, double step, char *buf, int n);

#endif
