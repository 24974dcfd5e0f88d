#include "server/httputil.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* How well does media range [r, r + n) match the type? 3 exact, 2 its type with
 * any subtype, 1 any type at all, 0 not. */
static int range_match(const char *r, size_t n, const char *type)
{
    const char *slash = strchr(type, '/');
    if (n == strlen(type) && strncasecmp(r, type, n) == 0) return 3;
    size_t tl = (size_t)(slash - type);
    if (n == tl + 2 && strncasecmp(r, type, tl) == 0 && r[tl] == '/' && r[tl + 1] == '*') return 2;
    if (n == 3 && strncmp(r, "*/*", 3) == 0) return 1;
    return 0;
}

int finc_accept_png(const char *accept)
{
    if (!accept) return 0;
    const char *types[2] = {"application/json", "image/png"};
    int spec[2] = {0, 0}, order[2] = {0, 0};
    double q[2] = {0, 0};
    int pos = 0, any = 0;
    for (const char *p = accept; *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',') p++;
        if (!*p) break;
        const char *start = p;
        while (*p && *p != ';' && *p != ',' && *p != ' ' && *p != '\t') p++;
        size_t n = (size_t)(p - start);
        double qv = 1.0;
        while (*p && *p != ',') {
            /* parameters: look for q= */
            if (*p == ';') {
                p++;
                while (*p == ' ' || *p == '\t') p++;
                if ((p[0] == 'q' || p[0] == 'Q') && p[1] == '=') {
                    char *end;
                    double v = strtod(p + 2, &end);
                    if (end != p + 2 && isfinite(v)) qv = v < 0 ? 0 : v > 1 ? 1 : v;
                    p = end;
                    continue;
                }
            }
            p++;
        }
        any = 1;
        pos++;
        for (int t = 0; t < 2; t++) {
            int m = range_match(start, n, types[t]);
            if (m > spec[t]) {
                spec[t] = m;
                q[t] = qv;
                order[t] = pos;
            }
        }
    }
    if (!any) return 0;
    if (q[0] <= 0 && q[1] <= 0) return -1;
    if (q[0] != q[1]) return q[1] > q[0];
    if (spec[0] != spec[1]) return spec[1] > spec[0];
    if (spec[1] == 3) return order[1] < order[0];
    return 0;
}

int finc_bearer_ok(const char *authorization, const char *keys)
{
    if (!authorization || !keys || !*keys) return 0;
    while (*authorization == ' ') authorization++;
    if (strncasecmp(authorization, "Bearer ", 7) != 0) return 0;
    const char *tok = authorization + 7;
    while (*tok == ' ') tok++;
    size_t tlen = strlen(tok);
    while (tlen > 0 && tok[tlen - 1] == ' ') tlen--;
    /* Every key is compared, each byte of it whatever the token, so the time
     * says nothing about which key or how much of it matched. */
    int ok = 0;
    for (const char *key = keys; *key;) {
        const char *eol = strchr(key, '\n');
        const size_t klen = eol ? (size_t)(eol - key) : strlen(key);
        volatile unsigned char diff = (unsigned char)(tlen != klen);
        for (size_t i = 0; i < klen; i++) {
            unsigned char t = tlen ? (unsigned char)tok[i % tlen] : 0;
            diff |= (unsigned char)(t ^ (unsigned char)key[i]);
        }
        ok |= diff == 0;
        key += klen + (eol != NULL);
    }
    return ok;
}

/* Bytes in a well-formed UTF-8 sequence starting at s (2..4), or 0. */
static int utf8_len(const unsigned char *s)
{
    int n;
    unsigned min;
    unsigned cp;
    if (s[0] >= 0xc2 && s[0] <= 0xdf) n = 2, min = 0x80, cp = s[0] & 0x1f;
    else if (s[0] >= 0xe0 && s[0] <= 0xef) n = 3, min = 0x800, cp = s[0] & 0x0f;
    else if (s[0] >= 0xf0 && s[0] <= 0xf4) n = 4, min = 0x10000, cp = s[0] & 0x07;
    else return 0;
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return n;
}

void finc_utf8_sanitize(char *s)
{
    for (unsigned char *p = (unsigned char *)s; p && *p;) {
        if (*p < 0x80) {
            p++;
            continue;
        }
        const int n = utf8_len(p);
        if (n) p += n;
        else *p++ = '?';
    }
}

char *finc_json_escape(const char *s, char *out, size_t outlen)
{
    size_t n = 0;
    if (outlen == 0) return out;
    for (; s && *s && n + 7 < outlen; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)c;
        } else if (c == '\n') {
            out[n++] = '\\';
            out[n++] = 'n';
        } else if (c < 0x20 || c == 0x7f) {
            n += (size_t)snprintf(out + n, outlen - n, "\\u%04x", c);
        } else {
            out[n++] = (char)c;
        }
    }
    out[n] = '\0';
    finc_utf8_sanitize(out);  /* a sequence cut at the end of out is replaced too */
    return out;
}

int finc_parse_positive(const char *s, double max, double *out)
{
    if (!s) return -1;
    while (*s == ' ') s++;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    while (*end == ' ') end++;
    if (errno || end == s || *end || !isfinite(v) || v <= 0 || v > max) return -1;
    *out = v;
    return 0;
}

int finc_http_tchar(unsigned char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c && strchr("!#$%&'*+-.^_`|~", c));
}
