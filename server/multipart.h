/* multipart/form-data (RFC 7578) for POST /log-likelihood: finds the parts of
 * a whole body held in memory, without copying their data. Fed untrusted
 * bytes; every length is checked against what is left of the body. */
#ifndef FINC_MULTIPART_H
#define FINC_MULTIPART_H

#include <stddef.h>
#include <stdint.h>

#define FINC_MULTIPART_BOUNDARY_MAX 70   /* RFC 2046 */

typedef struct {
    char name[128];            /* form field name, "" when absent */
    char filename[256];        /* "" when absent */
    char content_type[128];    /* "" when absent */
    int has_filename;
    const uint8_t *data;       /* into the body */
    size_t len;
} finc_part;

/* Copies the boundary parameter of a Content-Type value into out
 * (FINC_MULTIPART_BOUNDARY_MAX + 1 bytes). Returns 0, or -1 with err set. */
int finc_multipart_boundary(const char *content_type, char *out, char *err, size_t errlen);

/* Splits body into parts (at most max_parts). Returns the number of parts,
 * or -1 with err set for a malformed body or too many parts. */
int finc_multipart_parse(const uint8_t *body, size_t len, const char *boundary,
                         finc_part *parts, int max_parts, char *err, size_t errlen);

/* Case-insensitive: does a media type (a Content-Type value, parameters
 * allowed) name type, e.g. finc_media_is("Image/PNG; x=y", "image/png")? */
int finc_media_is(const char *value, const char *type);

#endif
