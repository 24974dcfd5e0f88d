/* The programmer-error check: never compiled out, prints the expression, file
 * and line, and aborts. Untrusted input never reaches it; see conventions. */
#ifndef FINC_CHECK_H
#define FINC_CHECK_H

#include <stdio.h>
#include <stdlib.h>

#define FINC_CHECK(cond)                                                              \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                  \
        }                                                                             \
    } while (0)

#endif
