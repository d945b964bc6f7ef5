/* Kernel launches of the emulation build: every block in turn, its threads as fibers on the
 * calling thread (a six-register stack switch on x86-64, ucontext elsewhere). A fiber runs until it finishes or waits: at __syncthreads for the whole
 * block, at a warp operation (__syncwarp, shuffles) for the lanes its mask names. When no fiber
 * can run, the scheduler releases the warps whose lanes all arrived (computing every lane's
 * shuffle result before any lane runs on, so none reads a value overwritten by a faster lane),
 * else the block barrier when every live thread is at it; anything else is a kernel bug that a
 * GPU would hang on or answer with garbage, and it aborts with the kernel, block and threads.
 * Threads run in index order between barriers (WAN_EMU_ORDER=reverse: the other way round).
 * Under AddressSanitizer the stack switches are announced to it, so device memory (host
 * allocations in cudart_emu.c) is bounds-checked in kernels too. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#include <vector>

#include "cuda_emu.h"
#include "emu.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

/* ---------------------------------------------------------------- stack switching
 * ucontext's swapcontext makes a system call per switch (the signal mask) and AddressSanitizer
 * clears the shadow of the whole target stack on each; a kernel switches threads at every barrier
 * and shuffle, so on x86-64 the switch is the callee-saved registers and the stack pointer. */
#if defined(__x86_64__)
extern "C" void wan_emu_switch(void **save_sp, void *new_sp);
asm(".text\n"
    ".globl wan_emu_switch\n"
    ".type wan_emu_switch,@function\n"
    "wan_emu_switch:\n"
    "    pushq %rbp\n"
    "    pushq %rbx\n"
    "    pushq %r12\n"
    "    pushq %r13\n"
    "    pushq %r14\n"
    "    pushq %r15\n"
    "    movq %rsp, (%rdi)\n"
    "    movq %rsi, %rsp\n"
    "    popq %r15\n"
    "    popq %r14\n"
    "    popq %r13\n"
    "    popq %r12\n"
    "    popq %rbx\n"
    "    popq %rbp\n"
    "    ret\n"
    ".size wan_emu_switch,.-wan_emu_switch\n");

namespace {
struct context {
    void *sp;
};
/* A context that starts entry() on the given stack: six zero registers, then entry as the return
 * address, and below it an empty slot where a caller's return address would be, so that entry
 * sees the stack alignment of a called function. entry must never return. */
void context_init(context *c, char *stack, size_t bytes, void (*entry)()) {
    uintptr_t top = ((uintptr_t)stack + bytes) & ~(uintptr_t)15;
    void **sp = (void **)(top - 16);
    sp[1] = nullptr;
    sp[0] = (void *)entry;
    sp -= 6;
    for (int i = 0; i < 6; i++) sp[i] = nullptr;
    c->sp = sp;
}
inline void context_switch(context *from, context *to) { wan_emu_switch(&from->sp, to->sp); }
} // namespace
#else
namespace {
struct context {
    ucontext_t uc;
};
void context_init(context *c, char *stack, size_t bytes, void (*entry)()) {
    getcontext(&c->uc);
    c->uc.uc_stack.ss_sp = stack;
    c->uc.uc_stack.ss_size = bytes;
    c->uc.uc_link = nullptr;
    makecontext(&c->uc, entry, 0);
}
inline void context_switch(context *from, context *to) { swapcontext(&from->uc, &to->uc); }
} // namespace
#endif

namespace wan_emu {

namespace {

enum fiber_state { RUNNABLE, AT_BLOCK_BARRIER, AT_WARP_OP, FINISHED };

struct fiber {
    context ctx;
    fiber_state state;
    uint3 tid;
    /* the pending warp operation */
    warp_op op;
    unsigned mask;
    int arg, width;
    uint64_t value, result;
#if EMU_ASAN
    void *fake_stack;
#endif
};

const size_t STACK_BYTES = 128 << 10; /* kernels are shallow; ASan frames are bigger */

struct scheduler {
    std::vector<fiber> fibers;
    std::vector<char *> stacks;
    context main_ctx;
#if EMU_ASAN
    void *main_fake_stack = nullptr;
    const void *main_stack_bottom = nullptr;
    size_t main_stack_size = 0;
#endif
    fiber *cur = nullptr;
    uint3 block;
    dim3 grid_dim, block_dim;
    const std::function<void()> *body = nullptr;
    const char *kernel = "";
    bool in_kernel = false;
    /* WAN_EMU_ORDER=reverse: threads run last to first between barriers, so that a missing
     * barrier shows whichever way round the reader and the writer are */
    bool reverse = false;
};

scheduler S;

[[noreturn]] void die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cuda emulator: kernel %s, block (%u,%u,%u): ", S.kernel, S.block.x, S.block.y, S.block.z);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

/* Switch from the running fiber back to the scheduler (the fiber has set its state). */
void yield_to_scheduler() {
    fiber *f = S.cur;
#if EMU_ASAN
    __sanitizer_start_switch_fiber(f->state == FINISHED ? nullptr : &f->fake_stack, S.main_stack_bottom,
                                   S.main_stack_size);
#endif
    context_switch(&f->ctx, &S.main_ctx);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(f->fake_stack, nullptr, nullptr);
#endif
}

void fiber_entry() {
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &S.main_stack_bottom, &S.main_stack_size);
#endif
    (*S.body)();
    S.cur->state = FINISHED;
    yield_to_scheduler();
    die("a finished thread was resumed");
}

void resume(fiber &f, size_t index) {
    S.cur = &f;
#if EMU_ASAN
    __sanitizer_start_switch_fiber(&S.main_fake_stack, S.stacks[index], STACK_BYTES);
#else
    (void)index;
#endif
    context_switch(&S.main_ctx, &f.ctx);
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(S.main_fake_stack, nullptr, nullptr);
#endif
    S.cur = nullptr;
}

char *new_stack() {
    void *p = mmap(nullptr, STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
        perror("cuda emulator: mmap of a fiber stack");
        abort();
    }
    return (char *)p;
}

/* Lane `src` of a warp operation seen from `lane` (or -1 when the lane keeps its own value). */
int source_lane(const fiber &f, int lane) {
    int w = f.width, base = lane / w * w, at = lane % w;
    switch (f.op) {
    case WARP_XOR: return base + ((at ^ f.arg) % w);
    case WARP_DOWN: return at + f.arg < w ? lane + f.arg : -1;
    case WARP_UP: return at >= f.arg ? lane - f.arg : -1;
    case WARP_IDX: return base + ((f.arg % w + w) % w);
    case WARP_SYNC: return -1;
    }
    return -1;
}

const char *state_name(fiber_state s) {
    switch (s) {
    case RUNNABLE: return "running";
    case AT_BLOCK_BARRIER: return "at __syncthreads";
    case AT_WARP_OP: return "at a warp operation";
    case FINISHED: return "finished";
    }
    return "?";
}

/* Release warp w if every lane its operation names has arrived; true when released. */
bool try_release_warp(size_t w) {
    std::vector<fiber> &F = S.fibers;
    size_t n = F.size(), first = w * 32;
    size_t last = first + 32 < n ? first + 32 : n;
    fiber *lead = nullptr;
    for (size_t i = first; i < last; i++)
        if (F[i].state == AT_WARP_OP) {
            lead = &F[i];
            break;
        }
    if (!lead) return false;
    for (int l = 0; l < 32; l++) {
        if (!(lead->mask >> l & 1)) continue;
        size_t i = first + (size_t)l;
        if (i >= last) die("warp operation: mask 0x%08x names lane %d of warp %zu, which the block does not have",
                           lead->mask, l, w);
        fiber &f = F[i];
        if (f.state == AT_WARP_OP) {
            if (f.op != lead->op || f.mask != lead->mask || f.width != lead->width)
                die("warp %zu: lanes %zu and %d wait at different warp operations", w, lead - &F[0] - first, l);
            continue;
        }
        if (f.state == FINISHED || f.state == AT_BLOCK_BARRIER)
            die("warp %zu: lane %d is %s while lane %zu waits at a warp operation with mask 0x%08x", w, l,
                state_name(f.state), (size_t)(lead - &F[0]) - first, lead->mask);
        return false; /* still running: cannot happen when the scheduler asks, kept for safety */
    }
    for (int l = 0; l < 32; l++) {
        if (!(lead->mask >> l & 1)) continue;
        fiber &f = F[first + (size_t)l];
        int src = source_lane(f, l);
        if (src >= 0 && !(lead->mask >> src & 1))
            die("warp %zu: lane %d reads lane %d, which is not in the mask 0x%08x", w, l, src, lead->mask);
        f.result = src >= 0 ? F[first + (size_t)src].value : f.value;
    }
    for (int l = 0; l < 32; l++)
        if (lead->mask >> l & 1) F[first + (size_t)l].state = RUNNABLE;
    return true;
}

/* Every runnable fiber until it waits or finishes (its own function: with ucontext, swapcontext
 * returns twice as far as the compiler knows, so loop variables must not live across it). */
__attribute__((noinline)) void run_runnable() {
    std::vector<fiber> &F = S.fibers;
    size_t n = F.size();
    for (size_t k = 0; k < n; k++) {
        size_t i = S.reverse ? n - 1 - k : k;
        while (F[i].state == RUNNABLE) resume(F[i], i);
    }
}

/* Thread i of the block, ready to start the kernel (noinline: getcontext returns twice). The
 * stack served other threads before. Frames that returned unpoisoned their own redzones; what a
 * finished thread leaves is the shadow of the frames it switched away from last (fiber_entry,
 * the switch), at the top of the stack: only that part is cleared (the whole 128 KiB, each
 * thread of each block, was a quarter of the emulator's time). */
const size_t STALE_SHADOW_BYTES = 16 << 10;
__attribute__((noinline)) void start_fiber(size_t i) {
    fiber &f = S.fibers[i];
    f.state = RUNNABLE;
    f.tid = make_uint3((unsigned)(i % S.block_dim.x), (unsigned)(i / S.block_dim.x % S.block_dim.y),
                       (unsigned)(i / ((size_t)S.block_dim.x * S.block_dim.y)));
#if EMU_ASAN
    __asan_unpoison_memory_region(S.stacks[i] + STACK_BYTES - STALE_SHADOW_BYTES, STALE_SHADOW_BYTES);
#endif
    context_init(&f.ctx, S.stacks[i], STACK_BYTES, fiber_entry);
}

void run_block(uint3 b) {
    std::vector<fiber> &F = S.fibers;
    size_t n = F.size();
    S.block = b;
    for (size_t i = 0; i < n; i++) start_fiber(i);
    for (;;) {
        run_runnable();
        size_t finished = 0, at_barrier = 0, at_warp = 0;
        for (size_t i = 0; i < n; i++) {
            finished += F[i].state == FINISHED;
            at_barrier += F[i].state == AT_BLOCK_BARRIER;
            at_warp += F[i].state == AT_WARP_OP;
        }
        if (finished == n) return;
        if (at_warp) {
            bool released = false;
            for (size_t w = 0; w * 32 < n; w++) released |= try_release_warp(w);
            if (released) continue;
            die("warp operations wait for lanes that never arrive (%zu threads at warp operations, %zu at "
                "__syncthreads)", at_warp, at_barrier);
        }
        if (finished)
            die("__syncthreads reached by %zu threads after %zu of the block's %zu threads returned", at_barrier,
                finished, n);
        for (size_t i = 0; i < n; i++) F[i].state = RUNNABLE;
    }
}

} // namespace

const uint3 &thread_idx() {
    if (!S.cur) die("threadIdx used outside a kernel");
    return S.cur->tid;
}
const uint3 &block_idx() { return S.block; }
const dim3 &block_dim() { return S.block_dim; }
const dim3 &grid_dim() { return S.grid_dim; }

void syncthreads() {
    if (!S.cur) die("__syncthreads outside a kernel");
    S.cur->state = AT_BLOCK_BARRIER;
    yield_to_scheduler();
}

uint64_t warp_exchange(warp_op op, unsigned mask, uint64_t bits, int arg, int width) {
    fiber *f = S.cur;
    if (!f) die("warp operation outside a kernel");
    unsigned lane = (unsigned)((size_t)(f - &S.fibers[0]) % 32);
    if (!(mask >> lane & 1)) die("lane %u calls a warp operation whose mask 0x%08x leaves it out", lane, mask);
    if (width <= 0 || width > 32 || (width & (width - 1)))
        die("warp operation width %d (must be a power of two up to 32)", width);
    f->op = op;
    f->mask = mask;
    f->arg = arg;
    f->width = width;
    f->value = bits;
    f->state = AT_WARP_OP;
    yield_to_scheduler();
    return f->result;
}

void run(const char *name, const launch_cfg &c, const std::function<void()> &body) {
    const dim3 &g = c.grid, &b = c.block;
    size_t threads = (size_t)b.x * b.y * b.z;
    bool bad = g.x == 0 || g.y == 0 || g.z == 0 || threads == 0 || threads > 1024 || b.z > 64 ||
               g.x > 2147483647u || g.y > 65535 || g.z > 65535 || c.smem > (48u << 10);
    if (bad) {
        fprintf(stderr, "cuda emulator: launch of %s refused: grid (%u,%u,%u), block (%u,%u,%u), %zu bytes of "
                        "dynamic shared memory\n", name, g.x, g.y, g.z, b.x, b.y, b.z, c.smem);
        wan_emu_set_error(cudaErrorInvalidConfiguration);
        return;
    }
    if (c.smem) {
        fprintf(stderr, "cuda emulator: %s: dynamic shared memory is not emulated\n", name);
        abort();
    }
    if (S.in_kernel) die("kernel %s launched from inside a kernel", name);
    wan_emu_compute_op();
    const char *order = getenv("WAN_EMU_ORDER");
    S.reverse = order && !strcmp(order, "reverse");
    S.in_kernel = true;
    S.kernel = name;
    S.grid_dim = g;
    S.block_dim = b;
    S.body = &body;
    S.fibers.assign(threads, fiber());
    while (S.stacks.size() < threads) S.stacks.push_back(new_stack());
    for (unsigned z = 0; z < g.z; z++)
        for (unsigned y = 0; y < g.y; y++)
            for (unsigned x = 0; x < g.x; x++) run_block(make_uint3(x, y, z));
    S.in_kernel = false;
    S.body = nullptr;
}

} // namespace wan_emu
