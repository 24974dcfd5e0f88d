/* The page at / (issue 18): a model card, samples, scores with anomaly
 * verdicts and live service figures, built on the public API only. Its
 * files (server/ui/) are compiled into the binary (server/ui/embed.sh), so
 * it works offline and in the container; --ui off turns it into a 404. */
#ifndef FINC_SERVER_UI_H
#define FINC_SERVER_UI_H

#include <stddef.h>

#include "server/request.h"

/* One embedded file; the table is generated into the build directory. */
typedef struct {
    const char *path;           /* as requested: "/", "/ui/app.js", ... */
    const char *type;           /* Content-Type */
    const char *etag;           /* a strong ETag, quoted: a hash of the bytes */
    const unsigned char *data;
    size_t len;
} finc_ui_asset;

extern const finc_ui_asset finc_ui_assets[];
extern const size_t finc_ui_asset_count;

/* The asset served at path, or NULL. */
const finc_ui_asset *finc_ui_find(const char *path);
/* GET or HEAD of an asset: 200, or 304 when If-None-Match names its ETag; 404
 * JSON when the path is none of them (the router sends no request here
 * while the page is off). */
enum MHD_Result finc_ui_handle(finc_request *r);

#endif
