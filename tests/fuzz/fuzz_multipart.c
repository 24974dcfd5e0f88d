/* A multipart/form-data upload: the first line is the Content-Type header's
 * value, the rest the body. Then every part's data as base64, as a JSON body
 * would carry an image. */
#include <stdlib.h>
#include <string.h>

#include "server/base64.h"
#include "server/multipart.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    if (!nl) return 0;
    const size_t hlen = (size_t)(nl - data);
    char *ctype = malloc(hlen + 1);
    memcpy(ctype, data, hlen);
    ctype[hlen] = 0;
    char boundary[FINC_MULTIPART_BOUNDARY_MAX + 1], err[512] = "";
    if (finc_multipart_boundary(ctype, boundary, err, sizeof err) == 0) {
        finc_part parts[8];
        const uint8_t *body = nl + 1;
        const int n = finc_multipart_parse(body, size - hlen - 1, boundary, parts, 8, err, sizeof err);
        if (n < 0 && !err[0]) abort();
        for (int i = 0; i < n; i++) {
            uint8_t *out = malloc(finc_base64_decoded_max(parts[i].len) + 1);
            err[0] = 0;
            if (finc_base64_decode((const char *)parts[i].data, parts[i].len, out, err, sizeof err) < 0 && !err[0])
                abort();
            free(out);
            (void)finc_media_is(parts[i].content_type, "image/png");
        }
    } else if (!err[0]) {
        abort();
    }
    free(ctype);
    return 0;
}
