#include "server/base64.h"

#include <stdio.h>

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void finc_base64_encode(const uint8_t *in, size_t n, char *out)
{
    size_t i = 0;
    char *o = out;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        *o++ = b64_alphabet[v >> 18];
        *o++ = b64_alphabet[(v >> 12) & 63];
        *o++ = b64_alphabet[(v >> 6) & 63];
        *o++ = b64_alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        *o++ = b64_alphabet[v >> 18];
        *o++ = b64_alphabet[(v >> 12) & 63];
        *o++ = '=';
        *o++ = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        *o++ = b64_alphabet[v >> 18];
        *o++ = b64_alphabet[(v >> 12) & 63];
        *o++ = b64_alphabet[(v >> 6) & 63];
        *o++ = '=';
    }
    *o = '\0';
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

long finc_base64_decode(const char *in, size_t len, uint8_t *out, char *err, size_t errlen)
{
    /* Said first: the length checks below would blame the wrong thing. */
    for (size_t i = 0; i < len; i++)
        if (in[i] == ' ' || in[i] == '\n' || in[i] == '\r' || in[i] == '\t') {
            snprintf(err, errlen,
                     "base64 with whitespace at offset %zu (line-wrapped? `base64 -w0` writes one line): "
                     "send it without", i);
            return -1;
        }
    size_t data = len;
    while (data > 0 && in[data - 1] == '=' && len - data < 2) data--;
    if (len != data && len % 4 != 0) {
        snprintf(err, errlen, "base64 padding does not end a 4-character group");
        return -1;
    }
    if (data % 4 == 1) {
        snprintf(err, errlen, "base64 length %zu is impossible (a 4-character group cut after 1)", data);
        return -1;
    }
    uint32_t acc = 0;
    int bits = 0;
    long n = 0;
    for (size_t i = 0; i < data; i++) {
        int v = b64_value((unsigned char)in[i]);
        if (v < 0) {
            unsigned char c = (unsigned char)in[i];
            if (c >= 0x20 && c < 0x7f) snprintf(err, errlen, "invalid base64 character '%c' at offset %zu", c, i);
            else snprintf(err, errlen, "invalid base64 byte 0x%02x at offset %zu", c, i);
            return -1;
        }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (uint8_t)(acc >> bits);
        }
    }
    return n;
}
