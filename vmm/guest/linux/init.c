/*
 * /init of thaw's minimal Linux guest: a static x86-64 program that makes no system call.
 *
 * On a KVM that runs only enlightened guest kernels' user space (see docs/design.md), a Linux
 * process cannot enter the kernel: `syscall` faults at the kernel's entry. So this init only
 * proves the kernel started it and keeps the guest busy: it spins forever, touching memory
 * (its own .bss, a page at a time, with a running sum so the loop is not optimized away).
 * Everything a test checks is done by the kernel itself (its console log).
 *
 * Built freestanding, without libc:
 *   gcc -static -nostdlib -ffreestanding -fno-stack-protector -fno-pie -no-pie -O2 -o init init.c
 */

#define PAGE 4096
#define PAGES 256

static volatile unsigned long pages[PAGES * PAGE / sizeof(unsigned long)];

void _start(void)
{
    unsigned long sum = 0;
    for (unsigned long round = 0;; round++) {
        for (unsigned long p = 0; p < PAGES; p++) {
            volatile unsigned long *word = &pages[p * (PAGE / sizeof(unsigned long))];
            *word = *word + round + p;
            sum += *word;
        }
        pages[1] = sum;
    }
}
