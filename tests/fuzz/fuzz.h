/* Shared by the libFuzzer targets (make fuzz): the loaders that take a path
 * read the fuzzer's bytes from an in-memory file. */
#ifndef FINC_FUZZ_H
#define FINC_FUZZ_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

/* A path whose file holds data[0..size): /proc/self/fd/N of one memfd,
 * rewritten on each call. */
static const char *fuzz_file(const uint8_t *data, size_t size)
{
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("finc-fuzz", MFD_CLOEXEC);
        if (fd < 0) {
            perror("memfd_create");
            abort();
        }
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size) {
        perror("fuzz_file");
        abort();
    }
    return path;
}

#endif
