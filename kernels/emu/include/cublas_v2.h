/* cuBLAS's shared types for kernels/emu (the GEMMs are cuBLASLt's: cublasLt.h). */
#ifndef FINC_EMU_CUBLAS_V2_H
#define FINC_EMU_CUBLAS_V2_H

#include "cuda_runtime.h"

enum cublasStatus_t { CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_ALLOC_FAILED = 3, CUBLAS_STATUS_INVALID_VALUE = 7,
                      CUBLAS_STATUS_NOT_SUPPORTED = 15 };
enum cublasOperation_t { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
#endif
