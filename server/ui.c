#include "server/ui.h"

#include <string.h>

/* Only the page's own origin; images are drawn on canvases from bytes the
 * script fetched, so no data: or blob: source is needed either. */
#define UI_CSP                                                                                             \
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "       \
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

const finc_ui_asset *finc_ui_find(const char *path)
{
    for (size_t i = 0; i < finc_ui_asset_count; i++)
        if (!strcmp(path, finc_ui_assets[i].path)) return &finc_ui_assets[i];
    return NULL;
}

/* If-None-Match holds etag: a list of entity tags (weak ones compare equal
 * too, RFC 9110 13.1.2) or "*". */
static int etag_matches(const char *inm, const char *etag)
{
    const size_t n = strlen(etag);
    for (const char *p = inm; *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',') p++;
        if (*p == '*') return 1;
        if (!strncmp(p, "W/", 2)) p += 2;
        if (!strncmp(p, etag, n) && (p[n] == '\0' || p[n] == ',' || p[n] == ' ' || p[n] == '\t')) return 1;
        while (*p && *p != ',') p++;
    }
    return 0;
}

enum MHD_Result finc_ui_handle(finc_request *r)
{
    const finc_ui_asset *a = finc_ui_find(r->path);
    if (!a) return finc_respond_error(r, 404, FINC_ERR_NOT_FOUND, NULL, "no such endpoint");
    const char *inm = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_IF_NONE_MATCH);
    const int fresh = inm && etag_matches(inm, a->etag);
    /* The bytes are static: libmicrohttpd sends them without a copy. */
    struct MHD_Response *resp = fresh ? MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT)
                                      : MHD_create_response_from_buffer(a->len, (void *)a->data, MHD_RESPMEM_PERSISTENT);
    if (!resp) return MHD_NO;
    if (!fresh) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, a->type);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_ETAG, a->etag);
    /* Revalidated on every load: a new binary's page is never mixed with an old script. */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(resp, "Content-Security-Policy", UI_CSP);
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
    MHD_add_response_header(resp, "X-Request-Id", r->id);
    if (atomic_load(&r->env->draining)) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
    const int status = fresh ? 304 : 200;
    const enum MHD_Result rc = MHD_queue_response(r->conn, (unsigned)status, resp);
    MHD_destroy_response(resp);
    r->status = status;
    r->bytes_out = fresh || r->method == METHOD_HEAD ? 0 : a->len;
    r->answered = 1;
    return rc;
}
