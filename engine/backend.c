/* The one check every backend's constructor makes of its table. */
#include <stddef.h>
#include <string.h>

#include "backend.h"
#include "error.h"

#define SLOT(name) {#name, offsetof(finc_backend, name)}
static const struct {
    const char *name;
    size_t offset;
} slots[] = {
    SLOT(alloc),           SLOT(release),         SLOT(upload),          SLOT(download),
    SLOT(zero),            SLOT(sync),            SLOT(submit),          SLOT(host_alloc),
    SLOT(host_release),    SLOT(upload_async),    SLOT(preprocess),      SLOT(postprocess),
    SLOT(squeeze),         SLOT(unsqueeze),       SLOT(finc_forward),    SLOT(finc_inverse),
    SLOT(actnorm_forward), SLOT(actnorm_inverse), SLOT(conv1x1_forward), SLOT(conv1x1_inverse),
    SLOT(coupling_forward), SLOT(coupling_inverse), SLOT(gaussian_logp), SLOT(latents_write),
    SLOT(latents_read),    SLOT(batch_bucket),    SLOT(warm_up),         SLOT(status),
    SLOT(destroy),
};
#undef SLOT

/* The function-pointer slots are all the struct holds past name and ctx;
 * the static assert keeps the list above in step with it. */
_Static_assert(sizeof(finc_backend) == offsetof(finc_backend, alloc) + 29 * sizeof(void (*)(void)),
               "finc_backend gained or lost a slot: update the list in engine/backend.c");

int finc_backend_check_table(const finc_backend *be, char *err, size_t errlen)
{
    if (!be->name || !be->name[0]) {
        return finc_errorf(err, errlen, "backend table: no name");
    }
    for (size_t i = 0; i < sizeof slots / sizeof slots[0]; i++) {
        void (*fn)(void);
        memcpy(&fn, (const char *)be + slots[i].offset, sizeof fn);
        if (!fn) return finc_errorf(err, errlen, "backend '%s': table slot %s is empty", be->name, slots[i].name);
    }
    return 0;
}
