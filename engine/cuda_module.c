/* Finds and loads the CUDA backend's shared module (engine/backend.h), once,
 * the first time anything asks for CUDA. The module resolves the few engine
 * functions it uses from the executable (linked -rdynamic) and binds its own
 * calls to itself (-Bsymbolic).
 *
 * Where no NVIDIA driver is installed (libcuda.so.1), the module is not loaded
 * at all: it would map cuBLAS and the CUDA runtime only to find no driver,
 * and every finc --version and --backend auto on a machine without a GPU
 * would pay that (docs/benchmarks.md, start-up). The build names the module's
 * runtime version (FINC_CUDA_RUNTIME_VERSION); the emulator's build
 * (kernels/emu/check.sh) names none and looks for no driver: its module
 * emulates one. */
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "engine/backend.h"
#include "engine/error.h"

#define MODULE_NAME "libfinc-cuda.so"

static pthread_once_t once = PTHREAD_ONCE_INIT;
static const finc_cuda_module_api *api;
static char module_path[PATH_MAX];
static char load_why[1024];   /* why no module is loaded: a reason kept for every caller */

/* The driver branch a CUDA runtime version needs (its minor-version
 * compatibility floor); the module says the same of its own runtime. */
const char *finc_cuda_driver_needed(int runtime)
{
    if (runtime >= 13000) return "R580 (580.65.06) or newer";
    if (runtime >= 12000) return "R525 (525.60.13) or newer";
    return "R450 or newer";
}

#ifdef FINC_CUDA_RUNTIME_VERSION
/* 1 when an NVIDIA driver's library loads; it stays loaded, as the runtime
 * would load it anyway. */
static int driver_present(const char *module)
{
    if (dlopen("libcuda.so.1", RTLD_LAZY | RTLD_LOCAL)) return 1;
    const int r = FINC_CUDA_RUNTIME_VERSION;
    snprintf(load_why, sizeof load_why,
             "no CUDA driver (libcuda.so.1 is not installed or not visible); the CUDA module %.300s has the CUDA "
             "%d.%d runtime, which needs driver %s", module, r / 1000, r % 1000 / 10, finc_cuda_driver_needed(r));
    return 0;
}
#else
static int driver_present(const char *module) { return 1; }
#endif

static void load(void)
{
    char exe[PATH_MAX], tried[900] = "";
    const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[n > 0 ? n : 0] = '\0';
    char *slash = strrchr(exe, '/');
    if (slash) *slash = '\0';
    char cand[4][PATH_MAX];
    int nc = 0;
    const char *env = getenv("FINC_CUDA_MODULE");
    if (env && *env) snprintf(cand[nc++], sizeof cand[0], "%.4000s", env);
    else if (exe[0]) {
        snprintf(cand[nc++], sizeof cand[0], "%.4000s/" MODULE_NAME, exe);
        snprintf(cand[nc++], sizeof cand[0], "%.4000s/build/" MODULE_NAME, exe);
        snprintf(cand[nc++], sizeof cand[0], "%.4000s/../lib/finc/" MODULE_NAME, exe);
    }
    for (int i = 0; i < nc; i++) {
        if (access(cand[i], F_OK) != 0) {
            const size_t k = strlen(tried);
            snprintf(tried + k, sizeof tried - k, "%s%.300s", k ? ", " : "", cand[i]);
            continue;
        }
        if (!driver_present(cand[i])) return;
        void *h = dlopen(cand[i], RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            snprintf(load_why, sizeof load_why, "the CUDA module %.300s does not load: %.600s", cand[i], dlerror());
            return;
        }
        const finc_cuda_module_api *(*entry)(void) =
            (const finc_cuda_module_api *(*)(void))dlsym(h, FINC_CUDA_MODULE_SYMBOL);
        const finc_cuda_module_api *a = entry ? entry() : NULL;
        if (!a || a->abi != FINC_CUDA_MODULE_ABI) {
            snprintf(load_why, sizeof load_why, "the CUDA module %.600s is not this finc's (ABI %d, want %d)", cand[i],
                     a ? a->abi : -1, FINC_CUDA_MODULE_ABI);
            dlclose(h);
            return;
        }
        memcpy(module_path, cand[i], sizeof module_path);
        api = a;
        return;
    }
    snprintf(load_why, sizeof load_why, "no CUDA module (looked for %.900s; build it where nvcc is, or set FINC_CUDA_MODULE)",
             tried[0] ? tried : MODULE_NAME);
}

const char *finc_cuda_module_path(void)
{
    pthread_once(&once, load);
    return api ? module_path : NULL;
}

int finc_cuda_devices(void)
{
    pthread_once(&once, load);
    return api ? api->device_count() : 0;
}

int finc_cuda_device_text(int device, char *buf, size_t n)
{
    pthread_once(&once, load);
    if (!api) {
        snprintf(buf, n, "%s", load_why);
        return -1;
    }
    return api->describe(device, buf, n);
}

int finc_cuda_available(char *why, size_t n)
{
    pthread_once(&once, load);
    if (!api) {
        snprintf(why, n, "%s", load_why);
        return 0;
    }
    if (api->device_count() > 0) return 1;
    /* Why no device: the module's own words (no driver, a driver older than its runtime, none found). */
    char desc[512];
    api->describe(0, desc, sizeof desc);
    snprintf(why, n, "no usable CUDA device: %.500s", desc);
    return 0;
}

finc_backend *finc_cuda_open(const finc_model *m, int max_batch, int device, finc_precision precision, char *err,
                             size_t errlen)
{
    pthread_once(&once, load);
    if (!api) {
        finc_errorf(err, errlen, "backend 'cuda' is not available: %.900s", load_why);
        return NULL;
    }
    return api->backend_new(m, max_batch, device, precision, err, errlen);  /* it says why when no device answers */
}
