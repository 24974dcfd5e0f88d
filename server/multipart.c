#include "server/multipart.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#define PART_HEADERS_MAX 8192

int finc_media_is(const char *value, const char *type)
{
    if (!value) return 0;
    while (*value == ' ' || *value == '\t') value++;
    size_t n = strlen(type);
    if (strncasecmp(value, type, n) != 0) return 0;
    const char *rest = value + n;
    while (*rest == ' ' || *rest == '\t') rest++;
    return *rest == '\0' || *rest == ';';
}

/* Reads a parameter value (token or quoted string) at *p into out; advances *p. */
static int param_value(const char **p, char *out, size_t outlen)
{
    const char *s = *p;
    size_t n = 0;
    if (*s == '"') {
        s++;
        while (*s && *s != '"') {
            if (*s == '\\' && s[1]) s++;
            if (n + 1 >= outlen) return -1;
            out[n++] = *s++;
        }
        if (*s != '"') return -1;
        s++;
    } else {
        while (*s && *s != ';' && *s != ' ' && *s != '\t' && *s != '\r' && *s != '\n') {
            if (n + 1 >= outlen) return -1;
            out[n++] = *s++;
        }
    }
    out[n] = '\0';
    *p = s;
    return 0;
}

/* Finds parameter `key` in "type; a=b; key=value" and copies its value. 1 found, 0 not, -1 bad. */
static int find_param(const char *header, const char *key, char *out, size_t outlen, int *found)
{
    *found = 0;
    const char *p = strchr(header, ';');
    const size_t klen = strlen(key);
    while (p) {
        p++;
        while (*p == ' ' || *p == '\t') p++;
        const char *eq = strchr(p, '=');
        if (!eq) return 0;
        const char *kend = eq;
        while (kend > p && (kend[-1] == ' ' || kend[-1] == '\t')) kend--;
        const char *v = eq + 1;
        while (*v == ' ' || *v == '\t') v++;
        if ((size_t)(kend - p) == klen && strncasecmp(p, key, klen) == 0) {
            if (param_value(&v, out, outlen) != 0) return -1;
            *found = 1;
            return 0;
        }
        char skip[512];
        if (param_value(&v, skip, sizeof skip) != 0) return -1;
        p = strchr(v, ';');
    }
    return 0;
}

int finc_multipart_boundary(const char *content_type, char *out, char *err, size_t errlen)
{
    int found;
    if (find_param(content_type, "boundary", out, FINC_MULTIPART_BOUNDARY_MAX + 1, &found) != 0) {
        snprintf(err, errlen, "malformed multipart boundary (at most %d characters)",
                 FINC_MULTIPART_BOUNDARY_MAX);
        return -1;
    }
    if (!found || out[0] == '\0') {
        snprintf(err, errlen, "multipart/form-data needs a boundary parameter");
        return -1;
    }
    return 0;
}

static const uint8_t *find_bytes(const uint8_t *hay, size_t n, const char *needle, size_t m)
{
    return m <= n ? memmem(hay, n, needle, m) : NULL;
}

/* Parses the header lines of one part, [h, h + n), into part. */
static int part_headers(const char *h, size_t n, finc_part *part, char *err, size_t errlen)
{
    char line[1024];
    size_t i = 0;
    int disposition = 0;
    while (i < n) {
        const char *eol = memmem(h + i, n - i, "\r\n", 2);
        size_t ll = eol ? (size_t)(eol - (h + i)) : n - i;
        if (ll >= sizeof line) {
            snprintf(err, errlen, "malformed multipart body: a part header line is over %zu bytes",
                     sizeof line - 1);
            return -1;
        }
        memcpy(line, h + i, ll);
        line[ll] = '\0';
        i += ll + (eol ? 2 : 0);
        if (memchr(line, '\0', ll)) {
            snprintf(err, errlen, "malformed multipart body: NUL in a part header");
            return -1;
        }
        char *colon = strchr(line, ':');
        if (!colon) {
            snprintf(err, errlen, "malformed multipart body: part header without ':'");
            return -1;
        }
        *colon = '\0';
        char *value = colon + 1;
        while (*value == ' ' || *value == '\t') value++;
        if (strcasecmp(line, "Content-Disposition") == 0) {
            if (strncasecmp(value, "form-data", 9) != 0) {
                snprintf(err, errlen, "malformed multipart body: Content-Disposition is not form-data");
                return -1;
            }
            int found;
            if (find_param(value, "name", part->name, sizeof part->name, &found) != 0 ||
                find_param(value, "filename", part->filename, sizeof part->filename, &part->has_filename) != 0) {
                snprintf(err, errlen, "malformed multipart body: bad Content-Disposition parameters");
                return -1;
            }
            disposition = 1;
        } else if (strcasecmp(line, "Content-Type") == 0) {
            size_t vl = strlen(value);
            if (vl >= sizeof part->content_type) vl = sizeof part->content_type - 1;
            memcpy(part->content_type, value, vl);
            part->content_type[vl] = '\0';
        }
    }
    if (!disposition) {
        snprintf(err, errlen, "malformed multipart body: a part has no Content-Disposition");
        return -1;
    }
    return 0;
}

int finc_multipart_parse(const uint8_t *body, size_t len, const char *boundary,
                         finc_part *parts, int max_parts, char *err, size_t errlen)
{
    char delim[FINC_MULTIPART_BOUNDARY_MAX + 5];
    const size_t blen = strlen(boundary);
    if (blen == 0 || blen > FINC_MULTIPART_BOUNDARY_MAX) {
        snprintf(err, errlen, "multipart boundary must be 1..%d characters", FINC_MULTIPART_BOUNDARY_MAX);
        return -1;
    }
    /* "\r\n--boundary"; the first delimiter may open the body without the CRLF. */
    snprintf(delim, sizeof delim, "\r\n--%s", boundary);
    const size_t dlen = blen + 4;
    size_t pos;
    if (len >= dlen - 2 && memcmp(body, delim + 2, dlen - 2) == 0) {
        pos = dlen - 2;
    } else {
        const uint8_t *d = find_bytes(body, len, delim, dlen);
        if (!d) {
            snprintf(err, errlen, "malformed multipart body: no boundary '%s' found", boundary);
            return -1;
        }
        pos = (size_t)(d - body) + dlen;
    }
    int count = 0;
    for (;;) {
        /* After a delimiter: "--" closes, else optional spaces then CRLF. */
        if (len - pos >= 2 && body[pos] == '-' && body[pos + 1] == '-') return count;
        while (pos < len && (body[pos] == ' ' || body[pos] == '\t')) pos++;
        if (len - pos < 2 || body[pos] != '\r' || body[pos + 1] != '\n') {
            snprintf(err, errlen, "malformed multipart body: %s after a boundary",
                     pos >= len ? "the body ends" : "no CRLF");
            return -1;
        }
        pos += 2;
        if (len - pos >= 2 && body[pos] == '\r' && body[pos + 1] == '\n') {
            snprintf(err, errlen, "malformed multipart body: a part has no Content-Disposition");
            return -1;
        }
        size_t hl_max = len - pos < PART_HEADERS_MAX ? len - pos : PART_HEADERS_MAX;
        const uint8_t *hend = find_bytes(body + pos, hl_max, "\r\n\r\n", 4);
        if (!hend) {
            snprintf(err, errlen, "malformed multipart body: part headers do not end (limit %d bytes)",
                     PART_HEADERS_MAX);
            return -1;
        }
        if (count == max_parts) {
            snprintf(err, errlen, "too many parts (at most %d)", max_parts);
            return -1;
        }
        finc_part *part = &parts[count];
        memset(part, 0, sizeof *part);
        size_t hlen = (size_t)(hend - (body + pos));
        if (part_headers((const char *)body + pos, hlen, part, err, errlen) != 0) return -1;
        pos += hlen + 4;
        const uint8_t *next = find_bytes(body + pos, len - pos, delim, dlen);
        if (!next) {
            snprintf(err, errlen, "malformed multipart body: no closing boundary");
            return -1;
        }
        part->data = body + pos;
        part->len = (size_t)(next - (body + pos));
        pos += part->len + dlen;
        count++;
    }
}
