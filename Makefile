# finc: build, test, benchmark, run.
#   make          build ./finc
#   make test     install missing Debian packages, build, run the Check suites and tool tests
#   make check SUITE=flow   one Check suite (CK_RUN_CASE=<case> for one case of it)
#   make test-cpu-only      the CLI suite on a CUDA=0 build
#   make run      serve the shipped model
#   make asan     the test suites under AddressSanitizer + UBSan
#   make bench    benchmarks (docs/benchmarks.md)
#   make test-deploy  deploy/ validated, and three replicas behind nginx under faults
#   make image        the CPU container image (podman or docker); make test-image runs and checks it
#   make test-hostile finc serve under inflate bombs, slow heads, a full pool, body-memory pressure
#                     and heavy requests: /healthz within 1 s throughout, memory back after each
#   make fuzz     the parsers of untrusted bytes and the HTTP server under libFuzzer, ASan, UBSan
#   make ood      anomaly detection on the probe sets (make probes), raw bits/dim against the anomaly score
#   make model DATA=folder/ NAME=parts   train, export and calibrate a model of your own images
#   make test-browser the page at / in headless Chromium against finc serve on loopback

CC       ?= gcc
ARCH     ?= -march=native
OPT      ?= -O3
PKGS     := libcjson libpng zlib libmicrohttpd libuv
SAN      ?=
CFLAGS   := -std=c11 -D_GNU_SOURCE $(OPT) $(ARCH) -g -fopenmp $(SAN) -Wall -Wextra -Werror \
            -Wshadow -Wno-unused-parameter $(shell pkg-config --cflags $(PKGS) 2>/dev/null) -I.
LDLIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -ldnnl -lm -lpthread -ldl
LDFLAGS  := -fopenmp $(SAN)
BUILD    ?= build
PYTHON   ?= /usr/bin/python3

ENGINE_SRC := $(wildcard engine/*.c)
IO_SRC     := $(wildcard io/*.c)
CLI_SRC    := $(wildcard cli/*.c)
SERVER_SRC := $(wildcard server/*.c)
TEST_SRC   := $(wildcard tests/test_*.c)
TEST_UTIL  := $(filter-out $(TEST_SRC),$(wildcard tests/*.c))
# The page at / (server/ui.c), its files compiled into the binary.
UI_FILES   := server/ui/index.html server/ui/style.css server/ui/app.js server/ui/icon.svg

LIB_OBJ   := $(patsubst %.c,$(BUILD)/%.o,$(ENGINE_SRC) $(IO_SRC))
CLI_OBJ   := $(patsubst %.c,$(BUILD)/%.o,$(CLI_SRC))
SERVER_OBJ := $(patsubst %.c,$(BUILD)/%.o,$(SERVER_SRC)) $(BUILD)/server/ui_assets.o
UTIL_OBJ  := $(patsubst %.c,$(BUILD)/%.o,$(TEST_UTIL))
TEST_BIN  := $(patsubst tests/%.c,$(BUILD)/tests/%,$(TEST_SRC))

# The CUDA engine (kernels/*.cu) is built, when nvcc is found (on PATH or in
# /usr/local/cuda), into the shared module $(BUILD)/libfinc-cuda.so, which ./finc
# loads with dlopen only when CUDA is asked for (engine/cuda_module.c): ./finc
# itself links no CUDA library, and runs the same with or without the module.
# CUDA=0 builds no module. Switching CUDA on or off needs make clean (or
# another BUILD directory).
NVCC ?= $(or $(shell command -v nvcc 2>/dev/null),$(wildcard /usr/local/cuda/bin/nvcc))
ifeq ($(CUDA),0)
NVCC :=
else ifeq ($(NVCC),)
ifneq ($(CUDA),)
$(error CUDA=$(CUDA) but nvcc was not found: put it on PATH or set NVCC=/path/to/nvcc)
endif
endif
ifneq ($(NVCC),)
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(realpath $(NVCC)))
# sm_90 (H100/H200) code plus compute_90 PTX that newer GPUs JIT-compile.
CUDA_ARCH ?= -gencode arch=compute_90,code=[sm_90,compute_90]
NVCCFLAGS := -O3 -std=c++17 $(CUDA_ARCH) -lineinfo -DFINC_HAVE_CUDA -I. -Werror all-warnings \
             -Xcompiler -fPIC,-Wall,-Wextra,-Werror,-Wno-unused-parameter
KERNEL_OBJ := $(patsubst %.cu,$(BUILD)/%.o,$(wildcard kernels/*.cu))
CUDA_LIBS := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lcudart -lstdc++
CUDA_MODULE := $(BUILD)/libfinc-cuda.so
# The module's runtime version, which finc names when no driver is there (engine/cuda_module.c).
$(BUILD)/engine/cuda_module.o: CFLAGS += -DFINC_CUDA_RUNTIME_VERSION=$(shell sed -n 's/^\#define CUDART_VERSION *\([0-9]*\).*/\1/p' $(CUDA_HOME)/include/cuda_runtime_api.h)
# The CUDA agreement checks (tests/cuda/) and the CUDA timings (bench/cuda_bench.c).
CUDA_CHECK_BIN := $(BUILD)/tests/cuda/test_backend_ops $(BUILD)/bench/cuda_bench
endif
# The module takes the engine functions it uses from the executable.
LDFLAGS   += -rdynamic

WEIGHTS ?= weights/fashion-mnist.safetensors
PORT    ?= 8080
# make run: the GPU when one answers, else the CPU
BACKEND ?= auto

.PHONY: all deps test asan run-suites bench bench-server run clean vectors
all: finc $(CUDA_MODULE)

# ./finc; $(BUILD)/finc is the same program for builds kept apart (make cuda-bundle).
# Either is built with the CUDA module beside it (./finc finds $(BUILD)/ too).
finc $(BUILD)/finc: $(CLI_OBJ) $(BUILD)/libfinc_server.a $(BUILD)/libfinc.a | $(CUDA_MODULE)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# The HTTP service (server/), linked into ./finc and the test binaries.
$(BUILD)/libfinc_server.a: $(SERVER_OBJ)
	@mkdir -p $(dir $@)
	ar rcs $@ $^

$(BUILD)/server/ui_assets.c: $(UI_FILES) server/ui/embed.sh
	@mkdir -p $(dir $@)
	sh server/ui/embed.sh $@ $(UI_FILES)
$(BUILD)/server/ui_assets.o: $(BUILD)/server/ui_assets.c
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/libfinc.a: $(LIB_OBJ)
	@mkdir -p $(dir $@)
	ar rcs $@ $^

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c -o $@ $<

$(BUILD)/tests/%: $(BUILD)/tests/%.o $(UTIL_OBJ) $(BUILD)/libfinc_server.a $(BUILD)/libfinc.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(shell pkg-config --libs check libcurl)

# Open-loop HTTP load generator for the server benchmark (tools/bench_server.sh).
$(BUILD)/loadgen: $(BUILD)/bench/loadgen.o
	$(CC) $(LDFLAGS) -o $@ $^ -lm

.SECONDARY:
-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)

deps:
	@bash tools/deps.sh

# The verdict is the exit status; tests/run_suites.sh prints one closing line.
test: deps
	@$(MAKE) --no-print-directory finc $(TEST_BIN) $(BUILD)/loadgen $(CUDA_CHECK_BIN)
	@PYTHON=$(PYTHON) bash tests/run_suites.sh $(TEST_BIN)

# make test-cpu-only: the CLI suite again on a CUDA=0 build (build/nocuda), which
# the same commands must serve whether CUDA was built in or not.
.PHONY: test-cpu-only
test-cpu-only: deps
	@$(MAKE) --no-print-directory BUILD=build/nocuda CUDA=0 build/nocuda/finc build/nocuda/tests/test_cli
	@FINC_EXE=build/nocuda/finc FINC_SKIP_PY=1 bash tests/run_suites.sh build/nocuda/tests/test_cli

# make check SUITE=flow: one Check suite (tests/test_flow.c); CK_RUN_CASE=<case> and
# CK_RUN_SUITE narrow it further, CK_VERBOSITY=verbose names every test.
SUITES := $(patsubst tests/test_%.c,%,$(TEST_SRC))
.PHONY: check
check: finc $(if $(SUITE),$(BUILD)/tests/test_$(SUITE))
	@if [ -z "$(SUITE)" ] || [ ! -f tests/test_$(SUITE).c ]; then \
	  echo "usage: make check SUITE=name, one of: $(SUITES)"; exit 2; fi
	$(BUILD)/tests/test_$(SUITE)

asan:
	@$(MAKE) --no-print-directory BUILD=build-asan OPT=-O1 \
	  SAN="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" \
	  run-suites
run-suites: $(TEST_BIN)
	@ASAN_OPTIONS=detect_leaks=1 FINC_SKIP_PY=1 bash tests/run_suites.sh $(TEST_BIN)

bench: finc
	@bash tools/bench.sh

bench-server: finc $(BUILD)/loadgen
	@bash tools/bench_server.sh

vectors:
	$(PYTHON) tools/make_vectors.py

# make probes: out-of-distribution probe sets (build/probes/*.idx); make ood:
# the shipped model's AUROC on each, raw bits/dim beside the anomaly score.
.PHONY: probes ood
probes: deps
	@bash tools/probes.sh
ood: probes finc
	./finc ood $(WEIGHTS) --in test $(foreach p,noise constant inverted vflip glyphs natural faces,--out build/probes/$(p).idx)

run: deps finc
	./finc serve --weights $(WEIGHTS) --port $(PORT) --backend $(BACKEND)

# make model DATA=SRC NAME=name [EPOCHS=20] [TRAIN_ARGS="--levels 3 ..."]: a model of your
# own images (a folder of PNGs, a .npy of uint8 (N, C, H, W), or an IDX file). Trains
# (tools/train.py; run it again to resume), then writes models/NAME.safetensors, calibrated
# on the held-out validation images (tools/export.py).
MODELS  ?= models
EPOCHS  ?= 20
THREADS ?= $(shell nproc)
.PHONY: model
model: deps finc
	@if [ -z "$(DATA)" ] || [ -z "$(NAME)" ]; then \
	  echo "usage: make model DATA=folder-of-pngs NAME=name [EPOCHS=20] [TRAIN_ARGS=...]"; exit 2; fi
	$(PYTHON) tools/train.py --data "$(DATA)" --checkpoint $(MODELS)/$(NAME)/checkpoint.pt --epochs $(EPOCHS) \
	  --threads $(THREADS) $(TRAIN_ARGS)
	$(PYTHON) tools/export.py --checkpoint $(MODELS)/$(NAME)/checkpoint.best.pt --out $(MODELS)/$(NAME).safetensors \
	  --threads $(THREADS)
	@echo "serve it: ./finc serve --weights $(MODELS)/$(NAME).safetensors"

clean:
	rm -rf build build-asan finc

# make test-deploy: deploy/ and the Dockerfile validated (tests/deploy/validate.sh),
# then the compose topology without containers: three replicas behind Debian's
# nginx, one killed and one drained under load, Prometheus scraping them all
# (tests/deploy/run.sh).
# make image: the CPU image as finc:cpu (tools/image.sh: podman, or docker when an
# engine answers; the Debian base made with debootstrap where no registry is reachable).
# make test-image: that image run and checked (tests/deploy/image.sh).
.PHONY: image test-image
image: deps
	@bash tools/image.sh
test-image: image finc
	@bash tests/deploy/image.sh

# make test-browser: the page at / driven in headless Chromium (Debian's chromium,
# puppeteer-core pinned in tests/browser/package-lock.json, installed with npm ci)
# against finc serve on free loopback ports, the shipped model with and without an
# API key; every figure checked against the CLI (tests/browser/run.sh).
# FINC_SCREENSHOTS=docs/ also writes the page's screenshots.
.PHONY: test-browser
test-browser: deps finc
	@WEIGHTS=$(WEIGHTS) bash tests/browser/run.sh

.PHONY: test-hostile
test-hostile: deps finc
	$(PYTHON) tests/hostile/run.py --finc ./finc --weights $(WEIGHTS)

.PHONY: test-deploy
test-deploy: deps finc image
	@bash tests/deploy/validate.sh
	@bash tests/deploy/run.sh

BENCH_BIN := $(BUILD)/bench/bench_engine
$(BUILD)/bench/bench_engine: $(BUILD)/bench/bench_engine.o $(BUILD)/libfinc.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# make fuzz: a libFuzzer target per parser of untrusted bytes (tests/fuzz/):
# weights files and their config JSON, PNG, .npy, IDX, multipart bodies, and
# the HTTP server itself on loopback. clang, ASan and UBSan; each replays its
# regression inputs, then runs FUZZ_SECONDS from seeds that the project's own
# writers make (tests/fuzz/run.sh).
# The library under test is the main source lists (engine, I/O, server), built
# once with coverage and the sanitizers into libfinc_fuzz.a; each target links
# what it uses of it.
FUZZ_LIB_SRC := $(ENGINE_SRC) $(IO_SRC) $(SERVER_SRC) $(BUILD)/server/ui_assets.c
FUZZ_OBJ := $(patsubst %.c,$(BUILD)/fuzz/obj/%.o,$(FUZZ_LIB_SRC))
FUZZ_BIN := $(patsubst tests/fuzz/%.c,$(BUILD)/fuzz/%,$(wildcard tests/fuzz/fuzz_*.c))
.PHONY: fuzz
fuzz: deps
	@$(MAKE) --no-print-directory $(FUZZ_BIN) $(BUILD)/fuzz/seeds
	@BUILD=$(BUILD) bash tests/fuzz/run.sh
FUZZ_SAN := address,undefined -fno-sanitize-recover=undefined
FUZZ_FLAGS := -std=c11 -D_GNU_SOURCE -DFINC_FUZZING -g -O1 -fopenmp -Wall -Wextra -Werror -Wno-unused-parameter -I. \
	      $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
FUZZ_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -ldnnl -lm -lpthread -ldl
$(BUILD)/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	clang $(FUZZ_FLAGS) -fsanitize=fuzzer-no-link,$(FUZZ_SAN) -MMD -MP -c -o $@ $<
$(BUILD)/fuzz/libfinc_fuzz.a: $(FUZZ_OBJ)
	ar rcs $@ $^
-include $(FUZZ_OBJ:.o=.d)
$(BUILD)/fuzz/fuzz_%: tests/fuzz/fuzz_%.c tests/fuzz/fuzz.h $(BUILD)/fuzz/libfinc_fuzz.a
	@mkdir -p $(dir $@)
	clang $(FUZZ_FLAGS) -fsanitize=fuzzer,$(FUZZ_SAN) -o $@ $< $(BUILD)/fuzz/libfinc_fuzz.a $(FUZZ_LIBS)
# fuzz_png on libpng built for fuzzing from Debian's source (tests/fuzz/libpng.sh),
# so coverage guides mutations through libpng's decoder; where that source cannot
# be had, on the system's libpng, uninstrumented, and it says so.
$(BUILD)/fuzz/fuzz_png: tests/fuzz/fuzz_png.c tests/fuzz/fuzz.h $(BUILD)/fuzz/libfinc_fuzz.a tests/fuzz/libpng.sh
	@mkdir -p $(dir $@)
	@if bash tests/fuzz/libpng.sh $(BUILD)/fuzz/libpng; then \
	  echo "fuzz_png: on libpng $$(cat $(BUILD)/fuzz/libpng/version), instrumented"; \
	  clang $(FUZZ_FLAGS) -fsanitize=fuzzer,$(FUZZ_SAN) -o $@ $< $(BUILD)/fuzz/libfinc_fuzz.a \
	    $(BUILD)/fuzz/libpng/libpng.a $(filter-out -lpng16,$(FUZZ_LIBS)); \
	else \
	  echo "fuzz_png: libpng's source could not be had ($(BUILD)/fuzz/libpng/apt.log): on the system's libpng, uninstrumented"; \
	  clang $(FUZZ_FLAGS) -fsanitize=fuzzer,$(FUZZ_SAN) -o $@ $< $(BUILD)/fuzz/libfinc_fuzz.a $(FUZZ_LIBS); \
	fi
# The whole server (CPU engine, LLVM's OpenMP) behind a loopback socket.
$(BUILD)/fuzz/fuzz_http: tests/fuzz/fuzz_http.c tests/fuzz/fuzz.h tests/testmodel.c $(BUILD)/fuzz/libfinc_fuzz.a
	@mkdir -p $(dir $@)
	clang $(FUZZ_FLAGS) -fsanitize=fuzzer,$(FUZZ_SAN) -o $@ $< tests/testmodel.c $(BUILD)/fuzz/libfinc_fuzz.a $(FUZZ_LIBS)
$(BUILD)/fuzz/seeds: $(BUILD)/tests/fuzz/seeds.o $(UTIL_OBJ) $(BUILD)/libfinc_server.a $(BUILD)/libfinc.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

# make cuda-check: the whole GPU run (tools/cuda_check.sh; needs a GPU):
# pre-flight, the CUDA engine against the CPU engine (tests/cuda/), the
# sanitizers, the timings (bench/cuda_bench.c), finc serve under load.
# CI only compiles those programs.
# make cuda-emu-check: the same checks on the small shapes, with the CUDA
# code run on the CPU by an emulated runtime (kernels/emu; no GPU needed),
# then finc serve on that backend with device faults injected.
.PHONY: cuda-check cuda-emu-check cuda-bundle
cuda-check:
	@bash tools/cuda_check.sh
# make cuda-bundle: the CUDA programs and their libraries for a GPU host without
# this project's build dependencies (tools/cuda_bundle.sh).
cuda-bundle:
	@bash tools/cuda_bundle.sh pack
cuda-emu-check: $(BUILD)/server/ui_assets.c
	@UI_ASSETS=$(BUILD)/server/ui_assets.c bash kernels/emu/check.sh

ifneq ($(NVCC),)
$(BUILD)/%.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -MMD -MP -c -o $@ $<

# -Bsymbolic: the module's calls to its own functions stay in the module.
$(CUDA_MODULE): $(KERNEL_OBJ)
	$(CC) -shared -Wl,-Bsymbolic -o $@ $^ $(CUDA_LIBS)

# The per-op checks link the kernels directly; the engine-level ones go through
# the module, as ./finc does.
CUDA_HARNESS_OBJ := $(BUILD)/tests/cuda/harness.o $(UTIL_OBJ)
$(BUILD)/tests/cuda/test_backend_ops: $(BUILD)/tests/cuda/test_backend_ops.o $(CUDA_HARNESS_OBJ) $(KERNEL_OBJ) \
		$(BUILD)/libfinc.a | $(CUDA_MODULE)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(CUDA_LIBS)
$(BUILD)/bench/cuda_bench: $(BUILD)/bench/cuda_bench.o $(CUDA_HARNESS_OBJ) $(KERNEL_OBJ) $(BUILD)/libfinc.a | $(CUDA_MODULE)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) $(CUDA_LIBS)
$(BUILD)/tests/cuda/%.o $(BUILD)/bench/cuda_bench.o: CFLAGS += -DFINC_HAVE_CUDA
endif
