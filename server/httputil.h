/* Small pieces of HTTP handling kept apart from the daemon so they can be
 * tested alone: Accept negotiation, the constant-time token check, JSON
 * string escaping for log lines, and header number parsing. */
#ifndef FINC_HTTPUTIL_H
#define FINC_HTTPUTIL_H

#include <stddef.h>

/* Which of PNG and JSON does an Accept header prefer? 1 PNG, 0 JSON (also
 * for NULL, empty, or a tie between wildcards), -1 when neither is acceptable. */
int finc_accept_png(const char *accept);

/* Does an Authorization header value carry "Bearer <key>" for one of keys
 * (one per line)? Compares in time that depends only on the keys' lengths,
 * never on which key matched or where a mismatch is. */
int finc_bearer_ok(const char *authorization, const char *keys);

/* Replaces, in place, every byte of s that is not part of well-formed UTF-8
 * with '?': what clients sent (field and file names, paths) is echoed into
 * JSON answers and log lines. */
void finc_utf8_sanitize(char *s);

/* Writes s as the inside of a JSON string literal into out (NUL-terminated,
 * cut to fit outlen). Returns out. */
char *finc_json_escape(const char *s, char *out, size_t outlen);

/* Is c a token character (RFC 9110: header names, methods)? */
int finc_http_tchar(unsigned char c);

/* Parses a positive decimal (milliseconds, say) up to max: 0, or -1. */
int finc_parse_positive(const char *s, double max, double *out);

#endif
