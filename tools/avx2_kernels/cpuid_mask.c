/* LD_PRELOAD library: this process (and its threads) sees an x86-64 CPU without AVX-512, VNNI
 * (EVEX or VEX) or AMX, so onnxruntime's MLAS, numpy and oneDNN pick their AVX2 kernels.
 *
 * Built and preloaded by tools/avx2_kernels.py. How: arch_prctl(ARCH_SET_CPUID, 0) makes the
 * CPUID instruction fault (the kernel's "cpuid_fault" feature); the SIGSEGV handler answers it
 * with the real values, CPUID faulting switched off around the real instruction, minus the
 * masked feature bits, and steps over the two-byte instruction. The program's own SIGSEGV
 * handlers (Python's faulthandler, which pytest enables) are kept aside by wrapping sigaction()
 * and signal(): any other SIGSEGV goes to them, or to the default action. Threads inherit the
 * faulting state; execve resets it, and LD_PRELOAD installs it again in the new program.
 *
 * NOTE: written by hand: no library masks CPUID at native speed (Intel SDE emulates, and is not
 * on a package registry; valgrind and qemu emulate too, so their timings mean nothing).
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <dlfcn.h>
#include <signal.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define BIT(n) (1u << (n))

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);

static struct sigaction program; /* the SIGSEGV handler the program asked for */
static sigaction_fn real_sigaction;

static sigaction_fn next_sigaction(void) {
    if (!real_sigaction) real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
    return real_sigaction;
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (sig != SIGSEGV) return next_sigaction()(sig, act, old);
    if (old) *old = program;
    if (act) program = *act;
    return 0;
}

sighandler_t signal(int sig, sighandler_t handler) {
    struct sigaction act, old;
    memset(&act, 0, sizeof act);
    act.sa_handler = handler;
    act.sa_flags = SA_RESTART;
    sigemptyset(&act.sa_mask);
    if (sigaction(sig, &act, &old) != 0) return SIG_ERR;
    return old.sa_handler;
}

static int set_faulting(int on) { return (int)syscall(SYS_arch_prctl, ARCH_SET_CPUID, on ? 0 : 1); }

static void on_segv(int sig, siginfo_t *info, void *raw) {
    ucontext_t *uc = raw;
    greg_t *r = uc->uc_mcontext.gregs;
    const unsigned char *ip = (const unsigned char *)r[REG_RIP];
    if (ip[0] != 0x0f || ip[1] != 0xa2) {
        if (program.sa_flags & SA_SIGINFO) {
            program.sa_sigaction(sig, info, raw);
        } else if (program.sa_handler != SIG_DFL && program.sa_handler != SIG_IGN) {
            program.sa_handler(sig);
        } else {
            struct sigaction fallback;
            memset(&fallback, 0, sizeof fallback);
            fallback.sa_handler = SIG_DFL;
            next_sigaction()(SIGSEGV, &fallback, NULL);
        } /* returning re-executes the faulting instruction */
        return;
    }
    unsigned leaf = (unsigned)r[REG_RAX], sub = (unsigned)r[REG_RCX], a, b, c, d;
    set_faulting(0);
    __cpuid_count(leaf, sub, a, b, c, d);
    set_faulting(1);
    if (leaf == 7 && sub == 0) {
        /* AVX512 F, DQ, IFMA, PF, ER, CD, BW, VL */
        b &= ~(BIT(16) | BIT(17) | BIT(21) | BIT(26) | BIT(27) | BIT(28) | BIT(30) | BIT(31));
        /* AVX512 VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ */
        c &= ~(BIT(1) | BIT(6) | BIT(11) | BIT(12) | BIT(14));
        /* AVX512 4VNNIW, 4FMAPS, VP2INTERSECT, AMX-BF16, AVX512-FP16, AMX-TILE, AMX-INT8 */
        d &= ~(BIT(2) | BIT(3) | BIT(8) | BIT(22) | BIT(23) | BIT(24) | BIT(25));
    } else if (leaf == 7 && sub == 1) {
        a = 0; /* AVX-VNNI, AVX512-BF16, AVX-IFMA, ... */
        d = 0; /* AVX-VNNI-INT8, AVX-NE-CONVERT, ... */
    }
    r[REG_RAX] = a;
    r[REG_RBX] = b;
    r[REG_RCX] = c;
    r[REG_RDX] = d;
    r[REG_RIP] += 2;
}

__attribute__((constructor)) static void install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    next_sigaction()(SIGSEGV, &sa, &program);
    if (set_faulting(1) != 0) {
        static const char msg[] = "cpuid_mask: CPUID faulting is not available on this machine\n";
        (void)!write(2, msg, sizeof msg - 1);
        _exit(3);
    }
}
