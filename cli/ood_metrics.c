#include "cli/ood_metrics.h"

#include <math.h>
#include <stdlib.h>

typedef struct {
    double s;
    int out;
} scored;

static int by_score_desc(const void *a, const void *b)
{
    const double x = ((const scored *)a)->s, y = ((const scored *)b)->s;
    return (x < y) - (x > y);
}

int finc_ood_measure(const double *in, int n_in, const double *out, int n_out, finc_ood_metrics *m)
{
    if (n_in <= 0 || n_out <= 0) return -1;
    const int n = n_in + n_out;
    scored *v = malloc((size_t)n * sizeof *v);
    if (!v) return -1;
    for (int i = 0; i < n_in; i++) v[i] = (scored){in[i], 0};
    for (int i = 0; i < n_out; i++) v[n_in + i] = (scored){out[i], 1};
    qsort(v, (size_t)n, sizeof *v, by_score_desc);
    /* Walk groups of equal scores from the top: each group is one threshold. */
    double u = 0, ap = 0, fpr95 = 1.0;
    int tp = 0, fp = 0, found95 = 0;
    for (int i = 0; i < n;) {
        int j = i, gin = 0, gout = 0;
        for (; j < n && v[j].s == v[i].s; j++) {
            gout += v[j].out;
            gin += !v[j].out;
        }
        /* out images of this group beat every in image below it, and tie with this group's */
        u += gout * ((double)(n_in - fp - gin) + 0.5 * gin);
        tp += gout;
        fp += gin;
        if (gout) ap += (double)gout / n_out * ((double)tp / (tp + fp));
        if (!found95 && tp >= ceil(0.95 * n_out)) {
            fpr95 = (double)fp / n_in;
            found95 = 1;
        }
        i = j;
    }
    free(v);
    m->auroc = u / ((double)n_in * n_out);
    m->aupr = ap;
    m->fpr95 = fpr95;
    return 0;
}
