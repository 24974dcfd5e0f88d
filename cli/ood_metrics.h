/* Detection figures of a score that is higher for out-of-distribution
 * images: what `finc ood` reports. Ties count half, as in the Mann-Whitney U. */
#ifndef FINC_OOD_METRICS_H
#define FINC_OOD_METRICS_H

typedef struct {
    double auroc;     /* P(score of an out image > score of an in image) */
    double aupr;      /* average precision, out images the positives */
    double fpr95;     /* in images flagged at the threshold that flags 95% of the out images */
} finc_ood_metrics;

/* Returns 0, or -1 when either set is empty or out of memory. */
int finc_ood_measure(const double *in, int n_in, const double *out, int n_out, finc_ood_metrics *m);

#endif
