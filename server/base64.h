/* Base64 (RFC 4648, standard alphabet) for the JSON bodies of the HTTP API:
 * PNGs travel as base64 strings. Decoding is strict about the alphabet and
 * padding; it is fed untrusted bytes. */
#ifndef FINC_BASE64_H
#define FINC_BASE64_H

#include <stddef.h>
#include <stdint.h>

/* Characters needed to encode n bytes, without the terminating NUL. */
static inline size_t finc_base64_encoded_len(size_t n) { return (n + 2) / 3 * 4; }

/* Writes finc_base64_encoded_len(n) characters and a NUL to out. */
void finc_base64_encode(const uint8_t *in, size_t n, char *out);

/* An upper bound on the bytes a base64 string of len characters decodes to. */
static inline size_t finc_base64_decoded_max(size_t len) { return len / 4 * 3 + 3; }

/* Decodes len characters of in into out (room for finc_base64_decoded_max(len)
 * bytes). Padding is optional; whitespace is not accepted. Returns the byte
 * count, or -1 with a message in err naming the first bad character. */
long finc_base64_decode(const char *in, size_t len, uint8_t *out, char *err, size_t errlen);

#endif
