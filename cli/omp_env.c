/* How finc's OpenMP threads wait, set without running the program twice.
 *
 * libgomp reads its settings once, in its own initialiser, before main. By
 * default an idle OpenMP thread spins for about 300k iterations at every
 * barrier. When the cores are shared (the server's own threads, a neighbour
 * container) that spinning starves the thread it waits for. A spin count of
 * 10k keeps the quiet-machine latency and loses little next to a busy
 * process (docs/benchmarks.md has both).
 *
 * A variable set in main comes too late, and one set before libc's own
 * initialiser is undone by it. So this executable defines getenv and
 * secure_getenv itself: a definition in the executable comes first in the
 * dynamic linker's search, so libgomp's lookups bind to these. They read the
 * environment exactly as libc does, and answer GOMP_SPINCOUNT=10000 only when
 * the environment sets neither GOMP_SPINCOUNT nor OMP_WAIT_POLICY: a user's
 * own setting always wins. `OMP_DISPLAY_ENV=verbose finc --version` shows
 * what libgomp saw (test_cli checks it). */
#include <stddef.h>
#include <string.h>
#include <sys/auxv.h>

#define FINC_SPIN_COUNT "10000"

extern char **environ;

static char *env_lookup(const char *name)
{
    const size_t n = strlen(name);
    if (!environ || n == 0 || strchr(name, '=')) return NULL;
    for (char **e = environ; *e; e++)
        if (!strncmp(*e, name, n) && (*e)[n] == '=') return *e + n + 1;
    return NULL;
}

char *getenv(const char *name)
{
    char *v = env_lookup(name);
    if (!v && !strcmp(name, "GOMP_SPINCOUNT") && !env_lookup("OMP_WAIT_POLICY"))
        return (char *)FINC_SPIN_COUNT;
    return v;
}

char *secure_getenv(const char *name)
{
    return getauxval(AT_SECURE) ? NULL : getenv(name);
}
