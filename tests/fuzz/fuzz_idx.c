/* An IDX data set, plain or gzip (finc eval --data FILE). */
#include "io/idx.h"
#include "tests/fuzz/fuzz.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512] = "";
    finc_idx a;
    if (finc_idx_read(fuzz_file(data, size), &a, err, sizeof err) == 0) finc_idx_free(&a);
    else if (!err[0]) abort();
    return 0;
}
