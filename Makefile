# Wan 2.1 DiT pretraining toolkit.
#   make            build every program (CUDA backend when nvcc is found)
#   make CUDA=0     CPU-only build for machines without the CUDA toolkit
#   make test       build and run the test suite (ends with "N passed, M failed")
#   make demo       run the whole chain on the embedded tiny default (CPU)
#   make deps       install the Debian packages the build and tests need
#   make test-gpu   CUDA ops against their CPU twins (needs a GPU)
#   make bench-gpu  GPU throughput benchmark (needs a GPU)
#   make test-emu   the CUDA backend on the CPU emulator (tests/emu), against the CPU backend
#   make EMU=1 ...  build into build/emu with the emulator in place of the GPU libraries

# The CUDA toolkit: CUDA_HOME, else /usr/local/cuda, else the one whose nvcc is on the PATH.
ifndef CUDA_HOME
  NVCC_ON_PATH := $(shell command -v nvcc 2>/dev/null)
  CUDA_HOME := $(if $(wildcard /usr/local/cuda/bin/nvcc),/usr/local/cuda,$(if $(NVCC_ON_PATH),$(patsubst %/bin/nvcc,%,$(realpath $(NVCC_ON_PATH))),/usr/local/cuda))
endif
NVCC ?= $(shell command -v nvcc 2>/dev/null || (test -x $(CUDA_HOME)/bin/nvcc && echo $(CUDA_HOME)/bin/nvcc))
EMU ?= 0
ifeq ($(EMU),1)
  override CUDA := 1
endif
ifeq ($(origin CUDA),undefined)
  CUDA := $(if $(NVCC),1,0)
endif

space := $(subst ,, )
# the words of $(1), each at its first place
uniq = $(if $(1),$(firstword $(1)) $(call uniq,$(filter-out $(firstword $(1)),$(1))))

VERSION := $(shell cat VERSION 2>/dev/null || echo 0.0.0)
GIT_REV := $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)

CC := gcc
PKGS := libconfig libzstd libxxhash jansson
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(or $(shell pkg-config --libs $(PKGS) 2>/dev/null),-lconfig -lzstd -lxxhash -ljansson)
# Debian's OpenMP build of OpenBLAS: its threads cooperate with ours instead of oversubscribing.
OPENBLAS_DIR := /usr/lib/x86_64-linux-gnu/openblas-openmp

CPPFLAGS := -Ilib -I/usr/include/x86_64-linux-gnu/openblas-openmp -D_GNU_SOURCE -DWAN_VERSION='"$(VERSION)"' -DWAN_GIT_REV='"$(GIT_REV)"' $(PKG_CFLAGS)
CFLAGS := -std=c17 -O2 -g -Wall -Wextra -Werror -fopenmp -MMD -MP
LDFLAGS := -fopenmp -L$(OPENBLAS_DIR) -Wl,-rpath,$(OPENBLAS_DIR)
LDLIBS := $(PKG_LIBS) -lopenblas -lpmi2 -lpthread -lrt -lm

ifeq ($(EMU),1)
  BUILD := build/emu
  BINDIR := build/emu/bin
else
  BUILD := build
  BINDIR := bin
endif
LIB_SRC := $(wildcard lib/*.c)
LIB_OBJ := $(LIB_SRC:%.c=$(BUILD)/%.o)

# CUDA: .cu kernels (nvcc) and host-only C files that call CUDA libraries (gcc).
ifeq ($(CUDA),1)
  CUDA_CU := $(wildcard lib/cuda/*.cu)
  CUDA_C := $(wildcard lib/cuda/*.c)
  CUDA_OBJ := $(CUDA_CU:%.cu=$(BUILD)/%.o) $(CUDA_C:%.c=$(BUILD)/%.o)
  # cuDNN, NCCL and cuBLAS where this machine has them: in the toolkit, the system, or PyTorch's
  # nvidia-* wheels (mk/find-cuda-lib.sh; CUDNN_HOME, NCCL_HOME, CUBLAS_HOME override). Their
  # directories come before the toolkit's, so that a newer cuDNN found elsewhere is the one
  # compiled against, linked and loaded.
  GPU_LIBS_FOUND := $(shell CUDA_HOME='$(CUDA_HOME)' mk/find-cuda-lib.sh --make)
  gpu_lib = $(patsubst $(1):$(2):%,%,$(filter $(1):$(2):%,$(GPU_LIBS_FOUND)))
  ifneq ($(filter-out deps clean,$(or $(MAKECMDGOALS),all)),)
    ifeq ($(and $(call gpu_lib,cudnn,version),$(call gpu_lib,nccl,version),$(call gpu_lib,cublas,version)),)
      $(error a CUDA build needs cuDNN, NCCL and cuBLAS (the message above says which is missing))
    endif
  endif
  GPU_LIB_CFLAGS := $(foreach l,cudnn nccl cublas,$(call gpu_lib,$(l),cflag))
  GPU_LIB_LINK := $(foreach l,cudnn nccl cublas,$(call gpu_lib,$(l),lib))
  GPU_LIB_DIRS := $(call uniq,$(patsubst -L%,%,$(filter -L%,$(GPU_LIB_LINK))) $(CUDA_HOME)/lib64)
  # what test-gpu and bench-gpu put on LD_LIBRARY_PATH (cuDNN loads its parts at run time)
  GPU_LIB_PATH := $(subst $(space),:,$(strip $(GPU_LIB_DIRS)))
  CPPFLAGS += -DWAN_CUDA=1 $(call uniq,$(GPU_LIB_CFLAGS) -I$(CUDA_HOME)/include)
  GPU_RUN_ENV := WAN_OUTER_LD_LIBRARY_PATH="$${LD_LIBRARY_PATH-}" \
                 LD_LIBRARY_PATH=$(GPU_LIB_PATH)$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}
ifeq ($(EMU),1)
  # The emulator: kernels compiled as host C++ (tests/emu/cuda_emu.h), the CUDA runtime, cuBLASLt,
  # cuDNN and NCCL replaced by CPU stand-ins; AddressSanitizer checks every access kernels make.
  EMU_LIBS := cudart_emu cublaslt_emu cudnn_emu nccl_emu
  CUDA_OBJ += $(BUILD)/tests/emu/emu_launch.o $(EMU_LIBS:%=$(BUILD)/tests/emu/%.o)
  CPPFLAGS += -Itests/emu
  SAN := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
  CFLAGS += $(SAN)
  LDFLAGS += $(SAN)
  LDLIBS += -lstdc++
  CXXFLAGS_EMU := -std=c++17 -O1 -g -Wall -Wextra -Werror -Wno-unused-function $(SAN) -MMD -MP \
                  -Ilib -Ilib/cuda -Itests/emu -DWAN_CUDA=1 $(call uniq,$(GPU_LIB_CFLAGS) -I$(CUDA_HOME)/include)
else
  # Dynamic cudart/cuBLAS/cuDNN/NCCL; never the libcuda driver stub, so binaries start without a driver.
  LDFLAGS += $(foreach d,$(GPU_LIB_DIRS),-L$(d) -Wl,-rpath,$(d))
  LDLIBS += $(filter -l%,$(GPU_LIB_LINK)) -lcudart -lstdc++
endif
  NVCC_ARCH := -gencode arch=compute_90a,code=sm_90a -gencode arch=compute_100a,code=sm_100a \
               -gencode arch=compute_90,code=compute_90
  # GPU_ARCH=sm_90a (or sm_100a ...): that machine code alone, for a build on the GPU it runs on
  ifdef GPU_ARCH
    NVCC_ARCH := -gencode arch=compute_$(GPU_ARCH:sm_%=%),code=$(GPU_ARCH)
  endif
  NVCCFLAGS := -std=c++17 -O3 -g -lineinfo $(NVCC_ARCH) -Ilib -DWAN_CUDA=1 \
               -Werror all-warnings -Xcompiler -Wall,-Wextra,-Werror -MMD -MP
else
  CUDA_OBJ := $(BUILD)/lib/nocuda/backend_nocuda.o
endif

PROGRAMS := $(BINDIR)/wan-preprocess $(BINDIR)/wan-train $(BINDIR)/wan-reshard $(BINDIR)/wan-report $(BINDIR)/wan-eval
LIBWAN := $(BUILD)/libwan.a

TEST_SRC := $(wildcard tests/unit/test_*.c)
TEST_BIN := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
TEST_TOOL_SRC := $(wildcard tests/tools/*.c)
TEST_TOOL_BIN := $(TEST_TOOL_SRC:tests/tools/%.c=$(BUILD)/tests/tools/%)
BENCH_SRC := $(wildcard bench/*.c)
BENCH_BIN := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)

.PHONY: all deps test test-unit test-gpu test-emu bench-gpu demo demo-slurm clean tests bench-bins emu-tools gpu-bins
all: $(PROGRAMS)

# Objects of a CUDA=1 and a CUDA=0 build differ (-DWAN_CUDA): switching variants in one build
# directory rebuilds everything instead of mixing them.
VARIANT := $(BUILD)/.variant-cuda$(CUDA)$(GPU_ARCH)
$(VARIANT):
	@mkdir -p $(BUILD) && rm -f $(BUILD)/.variant-cuda* && touch $@

$(LIBWAN): $(LIB_OBJ) $(CUDA_OBJ) $(VARIANT)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $(filter %.o,$^)

$(BUILD)/%.o: %.c $(VARIANT)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

ifeq ($(EMU),1)
$(BUILD)/%.emu.cc: %.cu tests/emu/rewrite_launches.pl $(VARIANT)
	@mkdir -p $(dir $@)
	perl tests/emu/rewrite_launches.pl $< > $@.tmp && mv $@.tmp $@

$(BUILD)/%.o: $(BUILD)/%.emu.cc tests/emu/cuda_emu.h
	$(CXX) $(CXXFLAGS_EMU) -include tests/emu/cuda_emu.h -c $< -o $@

$(BUILD)/tests/emu/%.o: tests/emu/%.cc $(VARIANT)
	@mkdir -p $(dir $@)
	$(CXX) $(CXXFLAGS_EMU) -c $< -o $@

$(BUILD)/tests/emu/%: tests/emu/%.c $(LIBWAN)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) -Itests $(CFLAGS) $(LDFLAGS) $< $(LIBWAN) -o $@ $(LDLIBS)

$(BUILD)/tests/emu/emu_selfcheck: $(BUILD)/tests/emu/emu_selfcheck.o $(LIBWAN)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

EMU_TESTS := $(patsubst tests/emu/%.c,$(BUILD)/tests/emu/%,$(wildcard tests/emu/test_*.c)) \
             $(BUILD)/tests/emu/emu_selfcheck
emu-tools: $(PROGRAMS) $(BUILD)/tests/tools/gpu_check $(BUILD)/tests/tools/gpu_model_check $(EMU_TESTS)
else
$(BUILD)/%.o: %.cu $(VARIANT)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c $< -o $@
endif

$(BINDIR)/wan-preprocess: $(BUILD)/preprocess/main.o $(LIBWAN)
$(BINDIR)/wan-train: $(BUILD)/train/main.o $(LIBWAN)
$(BINDIR)/wan-reshard: $(BUILD)/ckpt/main.o $(LIBWAN)
$(BINDIR)/wan-report: $(BUILD)/eval/report_main.o $(LIBWAN)
$(BINDIR)/wan-eval: $(BUILD)/eval/eval_main.o $(LIBWAN)
$(PROGRAMS):
	@mkdir -p $(BINDIR)
	$(CC) $(LDFLAGS) $^ -o $@ $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(LIBWAN)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) -Itests $(CFLAGS) $(LDFLAGS) $< $(LIBWAN) -o $@ $(LDLIBS)

$(BUILD)/tests/tools/%: tests/tools/%.c $(LIBWAN)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) -Itests $(CFLAGS) $(LDFLAGS) $< $(LIBWAN) -o $@ $(LDLIBS)

$(BUILD)/bench/%: bench/%.c $(LIBWAN)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $(LDFLAGS) $< $(LIBWAN) -o $@ $(LDLIBS)

# benchmarks are built with the tests so that CI compiles them too; with CUDA, so is the
# emulation build that runs the CUDA backend on the CPU (tests/integration/test_cuda_emu.sh,
# test_nccl_emu.sh)
tests: $(PROGRAMS) $(TEST_BIN) $(TEST_TOOL_BIN) $(BENCH_BIN)
ifeq ($(CUDA)$(EMU),10)
tests: emu-build
emu-build:
	@$(MAKE) --no-print-directory EMU=1 emu-tools
.PHONY: emu-build
endif
bench-bins: $(PROGRAMS) $(BENCH_BIN)
# What the GPU targets run: no unit tests, no emulation build (device time is short).
gpu-bins: $(PROGRAMS) $(TEST_TOOL_BIN) $(BENCH_BIN) $(BUILD)/tests/test_cudnn_graph

# Debian packages for the build, the tests (PyTorch reference, local Slurm cluster) and the demo.
DEB_PKGS := gcc make pkg-config libconfig-dev libzstd-dev zstd libxxhash-dev libjansson-dev \
  libopenblas-openmp-dev libpmi2-0-dev slurmctld slurmd slurm-client munge \
  python3 python3-torch python3-numpy librsvg2-bin
deps:
	@missing=$$(for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | \
	    grep -q 'install ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	cmd="apt-get update && apt-get install -y --no-install-recommends $$(echo $$missing)"; \
	if [ "$$(id -u)" = 0 ]; then echo "make deps: installing $$(echo $$missing)" >&2; \
	  DEBIAN_FRONTEND=noninteractive sh -c "$$cmd" >&2 || { echo "make deps: failed: $$cmd" >&2; exit 1; }; \
	else echo "make deps: missing Debian packages; run as root:" >&2; echo "  $$cmd" >&2; exit 1; fi

# TESTS=pattern runs a subset; the last line is "N passed, M failed".
# test and demo install missing packages first (tools/deps.sh), then build in a fresh make
# so that pkg-config sees what was just installed.
test:
	@$(MAKE) --no-print-directory deps
	@$(MAKE) --no-print-directory tests
	@tests/run.sh $(TESTS)

# GPU machines often have no package mirror: these two do not install packages; where the build
# libraries are missing they unpack the ones carried in .gpu-debs (tests/gpu/carry-debs.sh).
# On a lent GPU, build for it alone (minutes of device time): make -j16 test-gpu GPU_ARCH=sm_90a.
test-gpu:
	@tests/gpu/unpack-debs.sh
	@$(MAKE) --no-print-directory gpu-bins
	@$(GPU_RUN_ENV) tests/gpu/run.sh

# The CUDA backend on the CPU emulator: needs the CUDA toolkit's headers, not a GPU.
test-emu:
	@$(MAKE) --no-print-directory EMU=1 emu-tools
	@tests/run.sh test_cuda_emu test_nccl_emu

bench-gpu:
	@tests/gpu/unpack-debs.sh
	@$(MAKE) --no-print-directory gpu-bins
	@$(GPU_RUN_ENV) bench/gpu.sh

demo:
	@$(MAKE) --no-print-directory deps
	@$(MAKE) --no-print-directory all
	@slurm/demo.sh

demo-slurm:
	@$(MAKE) --no-print-directory deps
	@$(MAKE) --no-print-directory all
	@slurm/demo.sh --slurm

clean:
	rm -rf $(BUILD) bin

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
