#!/usr/bin/env bash
# Building where cuDNN and NCCL are not in the CUDA toolkit (mk/find-cuda-lib.sh): a GPU
# machine whose image holds them only in PyTorch's nvidia-* wheels (site-packages/nvidia/cudnn,
# nvidia/nccl: headers, and libraries named by their soname only), next to a toolkit with an
# older cuDNN of its own. Made here from this machine's libraries: a toolkit folder whose cuDNN
# says 9.12 and which has no NCCL, and a wheel folder with the real cuDNN and NCCL. The build
# must compile against the wheel's cuDNN headers (the newest), link and load its libraries, and
# the cuDNN graph test must pass with them; a named CUDNN_HOME that holds nothing stops the
# build with a message naming it.
source "$(dirname "$0")/../lib.sh"
CUDA=${CUDA_HOME:-/usr/local/cuda}
if ! [ -f "$CUDA/include/cudnn.h" ] || ! [ -f "$CUDA/include/nccl.h" ] || ! [ -d "$ROOT/build/lib/cuda" ]; then
    echo "skipped: needs a CUDA build with cuDNN and NCCL in $CUDA (none here)"
    echo "0 passed, 0 failed"
    exit 0
fi
if [ -e /usr/include/cudnn.h ] || [ -e /usr/include/nccl.h ]; then
    echo "skipped: this machine's own cuDNN or NCCL in /usr would be found before the wheel's"
    echo "0 passed, 0 failed"
    exit 0
fi
t_tmpdir
FIND=$ROOT/mk/find-cuda-lib.sh

# ---- the wheels: site/nvidia/{cudnn,nccl}/{include,lib}, sonames only
W=$T_TMP/site/nvidia
mkdir -p "$W/cudnn/include" "$W/cudnn/lib" "$W/nccl/include" "$W/nccl/lib"
for f in "$CUDA"/include/cudnn*.h; do ln -s "$f" "$W/cudnn/include/"; done
for f in "$CUDA"/lib64/libcudnn*.so.9; do ln -s "$(readlink -f "$f")" "$W/cudnn/lib/${f##*/}"; done
for f in "$CUDA"/include/nccl*; do ln -s "$f" "$W/nccl/include/"; done
ln -s "$(readlink -f "$CUDA/lib64/libnccl.so.2")" "$W/nccl/lib/libnccl.so.2"

# ---- the toolkit: everything but NCCL, and a cuDNN that says it is 9.12
K=$T_TMP/cuda
mkdir -p "$K/include" "$K/lib64"
for f in "$CUDA"/*; do case ${f##*/} in include | lib64) ;; *) ln -s "$f" "$K/" ;; esac; done
for f in "$CUDA"/include/*; do case ${f##*/} in cudnn* | nccl*) ;; *) ln -s "$f" "$K/include/" ;; esac; done
for f in "$CUDA"/lib64/*; do case ${f##*/} in libnccl*) ;; *) ln -s "$f" "$K/lib64/" ;; esac; done
for f in "$CUDA"/include/cudnn*.h; do cp "$f" "$K/include/"; done
sed -i 's/^#define CUDNN_MINOR .*/#define CUDNN_MINOR 12/' "$K/include/cudnn_version.h"

export CUDA_HOME=$K PYTHONPATH=$T_TMP/site${PYTHONPATH:+:$PYTHONPATH}
real=$(CUDA_HOME=$CUDA PYTHONPATH= "$FIND" cudnn --version)

# ---- what the finder says
v=$("$FIND" cudnn --version)
t_check "the newest cuDNN is chosen: the wheel's $real over the toolkit's 9.12.0 (got $v)" [ "$v" = "$real" ]
v=$("$FIND" cudnn --cflags)
t_check "cuDNN headers from the wheel ($v)" [ "$v" = "-I$W/cudnn/include" ]
v=$("$FIND" cudnn --libs)
t_check "cuDNN linked by its soname from the wheel ($v)" \
    [ "$v" = "-L$W/cudnn/lib -Wl,-rpath,$W/cudnn/lib -l:libcudnn.so.9" ]
v=$("$FIND" nccl --libs)
t_check "NCCL from the wheel, the toolkit having none ($v)" \
    [ "$v" = "-L$W/nccl/lib -Wl,-rpath,$W/nccl/lib -l:libnccl.so.2" ]
v=$("$FIND" cublas --libs)
t_check "cuBLAS from the toolkit ($v)" [ "$v" = "-L$K/lib64 -Wl,-rpath,$K/lib64 -lcublasLt -lcublas" ]
v=$(PYTHONPATH= "$FIND" cudnn --version)
t_check "without the wheel, the toolkit's own cuDNN ($v)" [ "$v" = 9.12.0 ]
v=$(CUDNN_HOME=$K "$FIND" cudnn --version)
t_check "CUDNN_HOME names the one place to use ($v)" [ "$v" = 9.12.0 ]
out=$(PYTHONPATH= "$FIND" nccl --libs 2>&1)
rc=$?
t_check_all "no NCCL anywhere: exit 1, the places tried and NCCL_HOME named" \
    '[ $rc = 1 ] && [[ $out == *"NCCL not found"* ]] && [[ $out == *"$K"* ]] && [[ $out == *NCCL_HOME* ]]'

# ---- the build: the cuDNN attention recompiled against the wheel, the graph test linked
# (the other objects are this checkout's own build, hard-linked; what make rewrites is removed
# first so that the originals stay as they are)
B=$T_TMP/build
cp -al "$ROOT/build" "$B"
rm -rf "$B/emu"
rm -f "$B"/lib/cuda/sdpa_cudnn.{o,d} "$B/libwan.a" "$B"/tests/test_cudnn_graph{,.d} "$B"/tests/tools/gpu_check{,.d}
if make -s -C "$ROOT" BUILD="$B" BINDIR="$T_TMP/bin" "$B/tests/test_cudnn_graph" "$B/tests/tools/gpu_check" \
    >"$T_TMP/make.log" 2>&1; then
    t_ok "make builds test_cudnn_graph and gpu_check with the wheel's cuDNN and NCCL"
else
    t_fail "make builds test_cudnn_graph and gpu_check with the wheel's cuDNN and NCCL"
    tail -n 20 "$T_TMP/make.log"
fi
t_check "sdpa_cudnn.c compiled against the wheel's cudnn.h (its dependency file)" \
    grep -q "$W/cudnn/include/cudnn.h" "$B/lib/cuda/sdpa_cudnn.d"
if grep -q "$K/include/cudnn.h" "$B/lib/cuda/sdpa_cudnn.d"; then
    t_fail "the toolkit's older cudnn.h was read too"
else t_ok "the toolkit's older cudnn.h was not read"; fi
# (the linker keeps only the libraries a program uses: gpu_check uses all three)
deps=$(ldd "$B/tests/tools/gpu_check" 2>&1)
echo "$deps" | grep -E "cudnn|nccl|cublas"
t_check_all "gpu_check loads libcudnn.so.9 and libnccl.so.2 from the wheel, cuBLASLt from the toolkit" \
    '[[ $deps == *"libcudnn.so.9 => $W/cudnn/lib/"* ]] && [[ $deps == *"libnccl.so.2 => $W/nccl/lib/"* ]] &&
     [[ $deps == *"libcublasLt.so.13 => $K/lib64/"* ]]'
out=$("$B/tests/test_cudnn_graph" 2>&1)
rc=$?
t_check_all "test_cudnn_graph passes with them (exit $rc: $(echo "$out" | tail -n1))" \
    '[ $rc = 0 ] && [[ $(echo "$out" | tail -n1) == *" passed, 0 failed" ]]'

# ---- a CUDNN_HOME that holds nothing: make stops, naming it
out=$(CUDNN_HOME=$T_TMP/none make -C "$ROOT" BUILD="$B" BINDIR="$T_TMP/bin" "$B/tests/test_cudnn_graph" 2>&1)
rc=$?
t_check_all "CUDNN_HOME without cuDNN: make fails, naming the folder and the variable" \
    '[ $rc != 0 ] && [[ $out == *"cuDNN not found"* ]] && [[ $out == *"$T_TMP/none"* ]] && [[ $out == *"needs cuDNN, NCCL and cuBLAS"* ]]'
t_summary
