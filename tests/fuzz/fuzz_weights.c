/* A weights file: the safetensors header and its JSON, the model config in
 * its metadata, every tensor's name, dtype, shape and offsets. A bad file
 * must be refused with a message, never read out of bounds. */
#include <string.h>

#include "engine/model.h"
#include "engine/safetensors.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = fuzz_file(data, size);
    char err[512];
    finc_st f;
    if (finc_st_open(&f, path, err, sizeof err) == 0) {
        for (int i = 0; i < finc_st_count(&f); i++) {
            const finc_st_tensor *t = finc_st_at(&f, i);
            if (finc_st_find(&f, t->name) == NULL) abort();
            if (t->numel <= (1u << 20)) {
                float *dst = malloc((t->numel ? t->numel : 1) * sizeof *dst);
                if (dst) (void)finc_st_to_f32(t, dst);
                free(dst);
            }
        }
        finc_st_close(&f);
    } else if (!err[0]) {
        abort();  /* a refusal always says why */
    }
    finc_model m;
    err[0] = 0;
    if (finc_model_load(&m, path, err, sizeof err) == 0) finc_model_free(&m);
    else if (!err[0]) abort();
    return 0;
}
