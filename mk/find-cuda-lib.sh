#!/usr/bin/env bash
# Where one of the CUDA libraries the build links lives, said the way pkg-config says it:
#   mk/find-cuda-lib.sh cudnn|nccl|cublas --version|--cflags|--libs|--libdir
#   mk/find-cuda-lib.sh --make    all three for the Makefile, one run: words NAME:PART:VALUE
#                                 (PART version, cflag or lib; one word per flag)
#
# GPU machines differ in where these are: inside the CUDA toolkit (CUDA_HOME), in the system's
# directories (/usr: Debian/Ubuntu packages), or only in the nvidia-* Python wheels that PyTorch
# brings (site-packages/nvidia/<name>/include and lib, the libraries there named by their soname
# only: libcudnn.so.9, no libcudnn.so). Places are tried in that order. cuDNN: the newest found
# (its single attention operation needs 9.13.1, and its kernels get faster with releases; a
# toolkit image may carry an older one than PyTorch's); NCCL and cuBLAS: the first found.
# CUDNN_HOME, NCCL_HOME or CUBLAS_HOME names the one place to use. PYTHON (default python3) is
# asked for its site-packages.
# Not found: a message on stderr naming the places tried, nothing on stdout (for that library),
# exit 1.
set -u
arch=$(uname -m)-linux-gnu

# the wheels' package folders: <site-packages>/nvidia/<part> (cudnn, nccl, cu13, cublas ...)
wheel_homes=()
while IFS= read -r d; do [ -n "$d" ] && wheel_homes+=("$d"); done < <("${PYTHON:-python3}" -c '
import os, sys
for p in sys.path:
    d = os.path.join(p or ".", "nvidia")
    if os.path.isdir(d):
        for s in sorted(os.listdir(d)):
            print(os.path.join(d, s))' 2>/dev/null)

# lib_flag DIR LIB: how to link LIB from DIR (-lLIB, or -l:libLIB.so.N when only the soname is
# there); nothing when DIR lacks it
lib_flag() {
    if [ -e "$1/lib$2.so" ]; then echo "-l$2"; return; fi
    local f best=
    for f in "$1/lib$2".so.[0-9]*; do
        [ -e "$f" ] || continue
        f=${f##*/}
        if [ -z "$best" ] || [ ${#f} -lt ${#best} ]; then best=$f; fi
    done
    [ -n "$best" ] && echo "-l:$best"
}

# version INCDIR: major.minor.patch from the version header
version() {
    local m v out=
    for m in $vmacros; do
        v=$(sed -n "s/^#define[[:space:]]\{1,\}$m[[:space:]]\{1,\}\([0-9]\{1,\}\).*/\1/p" "$1/$vheader" | head -n1)
        [ -n "$v" ] || return 1
        out=${out:+$out.}$v
    done
    echo "$out"
}

# a version as one number that orders like the version
vkey() {
    local IFS=.
    # shellcheck disable=SC2086
    set -- $1
    echo $(((${1:-0} * 1000 + ${2:-0}) * 1000 + ${3:-0}))
}

# locate_lib NAME: sets found_ver, inc_flags (may be empty), link_flags; 1 (and says why) when absent
locate_lib() {
    local label libs probe policy override override_var
    case $1 in
    cudnn) label=cuDNN libs="cudnn" probe=cudnn.h vheader=cudnn_version.h
        vmacros="CUDNN_MAJOR CUDNN_MINOR CUDNN_PATCHLEVEL" policy=newest override=${CUDNN_HOME:-}
        override_var=CUDNN_HOME ;;
    nccl) label=NCCL libs="nccl" probe=nccl.h vheader=nccl.h vmacros="NCCL_MAJOR NCCL_MINOR NCCL_PATCH"
        policy=first override=${NCCL_HOME:-} override_var=NCCL_HOME ;;
    cublas) label=cuBLAS libs="cublasLt cublas" probe=cublasLt.h vheader=cublas_api.h
        vmacros="CUBLAS_VER_MAJOR CUBLAS_VER_MINOR CUBLAS_VER_PATCH" policy=first override=${CUBLAS_HOME:-}
        override_var=CUBLAS_HOME ;;
    esac
    local homes
    if [ -n "$override" ]; then homes=("$override"); else
        homes=("${CUDA_HOME:-/usr/local/cuda}" /usr "${wheel_homes[@]}"); fi
    local best_key=-1 found_inc= found_lib= found_flags= h inc libdir flags l f ver key
    for h in "${homes[@]}"; do
        for inc in "$h/include" "$h/include/$arch"; do
            [ -e "$inc/$probe" ] && [ -e "$inc/$vheader" ] || continue
            ver=$(version "$inc") || continue
            for libdir in "$h/lib64" "$h/lib" "$h/lib/$arch"; do
                flags=
                for l in $libs; do
                    f=$(lib_flag "$libdir" "$l") || { flags=; break; }
                    flags="$flags $f"
                done
                [ -n "$flags" ] || continue
                key=$(vkey "$ver")
                if [ "$key" -gt "$best_key" ]; then
                    best_key=$key found_inc=$inc found_lib=$libdir found_flags=${flags# } found_ver=$ver
                fi
                break
            done
            break
        done
        [ -n "$found_inc" ] && [ "$policy" = first ] && break
    done
    if [ -z "$found_inc" ]; then
        {
            echo "$label not found: no include/$probe with lib${libs%% *}.so* beside it under any of:"
            printf '  %s\n' "${homes[@]}"
            echo "Set $override_var to its folder (the one holding include/ and lib/), or build without CUDA: make CUDA=0"
        } >&2
        return 1
    fi
    # the compiler's and the linker's own directories are not named (an -I/usr/include reorders
    # the system headers)
    case $found_inc in /usr/include | /usr/include/"$arch") inc_flags= ;; *) inc_flags="-I$found_inc" ;; esac
    case $found_lib in /usr/lib | /usr/lib64 | /usr/lib/"$arch" | /lib | /lib64 | /lib/"$arch") link_flags=$found_flags ;;
    *) link_flags="-L$found_lib -Wl,-rpath,$found_lib $found_flags" ;; esac
    found_dir=$found_lib
}

usage() { echo "usage: $0 cudnn|nccl|cublas --version|--cflags|--libs|--libdir, or $0 --make" >&2; exit 2; }
if [ "${1:-}" = --make ]; then
    rc=0
    for n in cudnn nccl cublas; do
        locate_lib "$n" || { rc=1; continue; }
        out="$n:version:$found_ver"
        for w in $inc_flags; do out="$out $n:cflag:$w"; done
        for w in $link_flags; do out="$out $n:lib:$w"; done
        echo "$out"
    done
    exit $rc
fi
case ${1:-} in cudnn | nccl | cublas) ;; *) usage ;; esac
case ${2:-} in --version | --cflags | --libs | --libdir) ;; *) usage ;; esac
locate_lib "$1" || exit 1
case $2 in
--version) echo "$found_ver" ;;
--cflags) echo "$inc_flags" ;;
--libs) echo "$link_flags" ;;
--libdir) echo "$found_dir" ;;
esac
