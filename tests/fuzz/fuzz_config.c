/* The model config, a JSON string in a weights file's metadata: parsed and
 * range-checked, then its tensor list enumerated as the loader does. */
#include <stdlib.h>
#include <string.h>

#include "engine/model.h"

static void count(void *user, const char *name, int ndim, const int64_t *shape) { ++*(int *)user; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *json = malloc(size + 1);
    memcpy(json, data, size);
    json[size] = 0;
    finc_config cfg;
    char err[512] = "";
    if (finc_config_parse(&cfg, json, err, sizeof err) == 0) {
        int n = 0;
        finc_config_each_tensor(&cfg, count, &n);
        if (n == 0) abort();
        finc_config_free(&cfg);
    } else if (!err[0]) {
        abort();
    }
    free(json);
    return 0;
}
