/* The untrusted-input error regime: a function that fails writes one message
 * into the caller's buffer and returns -1 (see docs of each module). */
#ifndef FINC_ERROR_H
#define FINC_ERROR_H

#include <stddef.h>

/* Formats the message into err (when err and errlen are non-zero); returns -1. */
int finc_errorf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
