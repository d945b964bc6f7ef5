/* The SVG line-plot writer: nice ticks, tick labels, and what the SVG holds (escaped text,
 * a legend entry per series, lines broken at missing values, points where the axes say). */
#include <stdlib.h>
#include <string.h>

#include "svgplot.h"
#include "test.h"

static int count(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

static void test_ticks(void) {
    double t[32], step;
    int n = wan_svgplot_ticks(0, 97, 6, t, 32, &step);
    CHECKF(step == 20 && n == 6 && t[0] == 0 && t[5] == 100, "step %g n %d", step, n);
    n = wan_svgplot_ticks(0.31, 0.59, 6, t, 32, &step);
    CHECKF(fabs(step - 0.1) < 1e-12 && n == 4 && fabs(t[0] - 0.3) < 1e-12 && fabs(t[n - 1] - 0.6) < 1e-12,
           "step %g n %d first %g", step, n, t[0]);
    n = wan_svgplot_ticks(1, 15, 8, t, 32, &step);
    CHECKF(step == 2 && t[0] == 0 && t[n - 1] == 16, "step %g first %g last %g", step, t[0], t[n - 1]);
    n = wan_svgplot_ticks(-3.2, 4.1, 6, t, 32, &step);
    CHECKF(step == 2 && t[0] == -4 && t[n - 1] == 6, "step %g", step);
    for (int i = 0; i < n; i++) CHECK(!(t[i] == 0 && signbit(t[i]))); /* no "-0" label */
    n = wan_svgplot_ticks(5, 5, 6, t, 32, &step); /* a flat series still gets a range */
    CHECK(n >= 2 && t[0] <= 5 && t[n - 1] >= 5 && t[n - 1] > t[0]);
}

static void test_labels(void) {
    char b[32];
    wan_svgplot_tick_label(1500, 500, b, sizeof b);
    CHECK(!strcmp(b, "1500"));
    wan_svgplot_tick_label(20000, 5000, b, sizeof b);
    CHECK(!strcmp(b, "20k"));
    wan_svgplot_tick_label(2500000, 500000, b, sizeof b);
    CHECK(!strcmp(b, "2.5M"));
    wan_svgplot_tick_label(0.25, 0.05, b, sizeof b);
    CHECK(!strcmp(b, "0.25"));
    wan_svgplot_tick_label(0.3, 0.1, b, sizeof b);
    CHECK(!strcmp(b, "0.3"));
    wan_svgplot_tick_label(12500, 2500, b, sizeof b);
    CHECK(!strcmp(b, "12.5k"));
}

static void test_render(void) {
    double x[] = {0, 10, 20, 30, 40}, y1[] = {1.0, 0.8, NAN, 0.5, 0.4}, y2[] = {0.9, 0.7, 0.6, 0.5, 0.45};
    wan_svg_series s[] = {{"run <a> & b", x, y1, 5, false, false, NULL}, {"val", x, y2, 5, true, true, "#123456"}};
    wan_svg_plot p = {"Loss \"per step\"", "step", "loss", 800, 450, false};
    char *svg;
    CHECK(wan_svgplot_render(&p, s, 2, &svg) == 0);
    CHECK(!strncmp(svg, "<?xml", 5) && strstr(svg, "</svg>\n") != NULL);
    CHECK(strstr(svg, "Loss &quot;per step&quot;") != NULL);
    CHECK(strstr(svg, "run &lt;a&gt; &amp; b") != NULL && strstr(svg, "<a>") == NULL);
    CHECK(count(svg, "<polyline") == 3); /* the NAN splits the first series in two */
    CHECK(count(svg, "<circle") == 5);   /* markers on the second series only */
    CHECK(count(svg, "stroke-dasharray") == 2); /* its line and its legend entry */
    CHECK(count(svg, wan_svgplot_color(0)) == 3); /* two stretches and the legend: palette colour 0 */
    CHECK(count(svg, "#123456") == 7);            /* line, 5 markers, legend: its own colour */
    /* x ticks 0..40 span the axes: x = 0 is at the left edge (90), 40 at the right (770) */
    CHECK(strstr(svg, "points=\"90.0,") != NULL);
    CHECK(strstr(svg, "770.0,") != NULL);
    CHECK(strstr(svg, ">step</text>") != NULL && strstr(svg, ">loss</text>") != NULL);
    free(svg);

    /* nothing finite: axes and a note, no line */
    double none[] = {NAN, NAN};
    wan_svg_series e = {"empty", x, none, 2, false, false, NULL};
    CHECK(wan_svgplot_render(&p, &e, 1, &svg) == 0);
    CHECK(strstr(svg, "no data") != NULL && count(svg, "<polyline") == 0);
    free(svg);
}

int main(void) {
    RUN(test_ticks);
    RUN(test_labels);
    RUN(test_render);
    return test_summary();
}
