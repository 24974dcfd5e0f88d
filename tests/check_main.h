/* A main() for one Check suite binary: FINC_CHECK_MAIN(my_suite) after the suite
 * function. Exit status 0 only when every test passed. */
#ifndef FINC_CHECK_MAIN_H
#define FINC_CHECK_MAIN_H

#include <check.h>
#include <stdlib.h>

#define FINC_CHECK_MAIN(suite_fn)                                   \
    int main(void)                                                  \
    {                                                               \
        SRunner *sr = srunner_create(suite_fn());                   \
        srunner_run_all(sr, CK_NORMAL);                             \
        int nf = srunner_ntests_failed(sr);                         \
        srunner_free(sr);                                           \
        return nf == 0 ? EXIT_SUCCESS : EXIT_FAILURE;               \
    }

#endif
