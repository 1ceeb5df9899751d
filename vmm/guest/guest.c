/* thaw test guest: a freestanding x86-64 program run at CPL3 with IOPL=3.
 *
 * Every vCPU works on its own slice of the data area, touching one 64-bit word per page in the
 * pattern the parameter page asks for, and folds every value it reads into a running checksum.
 * Nothing depends on the TSC or on timing, so a run that is paused, checkpointed and restored ends
 * with exactly the checksum of an uninterrupted run. Reports go to a per-vCPU record in guest memory,
 * announced by a single `out` to TG_PORT (each exit costs tens of microseconds on a software KVM, so
 * they are rare). A short banner goes to the 8250 serial port.
 *
 * Interrupt mode (timer_hz > 0): each vCPU programs its local APIC's timer in periodic mode
 * through the user-accessible mapping of the LAPIC page and enables interrupts; the CPL0 handler
 * in entry.S counts ticks outside the data area, so the checksum is the same in both modes, and
 * every report carries the vCPU's tick count. Every other stretch of TG_HOLD_STRETCH touches runs
 * with the LAPIC's task priority raised to the timer's class: the ticks of that stretch wait in
 * the LAPIC's IRR (coalesced into one) until it ends, as they would behind a `cli` (which CPL3
 * code cannot run here), so a checkpoint then holds a pending interrupt.
 *
 * Device mode (disk_sectors or net_frames > 0, interrupt mode only): vCPU 0 also drives a
 * virtio disk and a network stream (devices.c), looking at them every TG_IO_POLL_EVERY touches
 * and, once its touches are done, until their work is done; it reports done only then. The
 * other vCPUs only touch memory. */
#include "devices.h"
#include "layout.h"

struct params {
    u64 magic;
    u32 pattern;
    u32 ncpus;
    u64 area_start;
    u64 area_size;
    u64 touches_per_cpu;
    u64 report_every;
    u64 seed;
    u64 hot_percent;
    u64 timer_hz;
    u64 disk_sectors;
    u64 disk_passes;
    u64 net_frames;
};

/* Device mode: vCPU 0 looks at its devices every this many touches. */
#define TG_IO_POLL_EVERY 1024

struct report {
    volatile u64 checksum;
    volatile u64 touches;
    volatile u64 code;
    volatile u64 slice_pages;
    volatile u64 ticks;
};

static inline void outl(unsigned short port, u32 v) {
    __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port) : "memory");
}
static inline void outb(unsigned short port, u8 v) {
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port) : "memory");
}

static void serial_puts(const char *s) {
    while (*s) outb(0x3f8, (u8)*s++);
}

/* This vCPU's timer ticks: the timer handler counts them at the bottom of its kernel stack. */
static inline u64 ticks(u64 cpu) {
    return *(volatile u64 *)(TG_KSTACKS_ADDR + cpu * TG_KSTACK_SIZE);
}

static void report(struct report *r, u64 cpu, u64 code, u64 sum, u64 touches) {
    r->ticks = ticks(cpu);
    r->checksum = sum;
    r->touches = touches;
    r->code = code;
    outl(TG_PORT, (u32)((code << 8) | cpu));
}

/* A driver failed: say so once (the device report has the details) and stop working. */
static void device_failed(struct report *r, u64 cpu) {
    report(r, cpu, TG_CODE_DEVICE_ERROR, 0, 0);
    for (;;) __asm__ volatile("pause");
}

static inline void lapic_write(u32 reg, u32 v) {
    *(volatile u32 *)(TG_LAPIC_BASE + reg) = v;
}

/* Starts this vCPU's LAPIC timer at `hz` (periodic, vector TG_TIMER_VECTOR). The vmm starts the
 * vCPU with interrupts enabled already: IOPL 3 would allow STI at CPL3 on hardware, but a KVM
 * that runs CPL3 code natively in host user mode (the software KVM here) raises #GP on it. */
static void start_timer(u64 hz) {
    lapic_write(TG_LAPIC_SVR, 0x1ff); /* APIC software enabled, spurious vector 0xff */
    lapic_write(TG_LAPIC_TIMER_DIVIDE, 0xb); /* divide by 1 */
    lapic_write(TG_LAPIC_LVT_TIMER, TG_TIMER_VECTOR | (1 << 17)); /* periodic, unmasked */
    lapic_write(TG_LAPIC_TIMER_INITIAL, (u32)(TG_LAPIC_HZ / hz));
}

static inline u64 xorshift(u64 *s) {
    u64 x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

/* Mix one observed value into the checksum and return the value to store back. */
static inline u64 mix(u64 *sum, u64 value, u64 page) {
    u64 s = (*sum ^ value) * 0x100000001b3UL + page;
    s ^= s >> 29;
    *sum = s;
    return value * 6364136223846793005UL + page + 1;
}

void guest_main(struct params *p, u64 cpu) {
    struct report *r = (struct report *)(TG_REPORT_ADDR + cpu * TG_REPORT_STRIDE);
    if (p->magic != TG_PARAMS_MAGIC || p->ncpus == 0 || cpu >= p->ncpus ||
        p->timer_hz > TG_LAPIC_HZ) {
        report(r, cpu, TG_CODE_BAD_PARAMS, 0, 0);
        for (;;) report(r, cpu, TG_CODE_BAD_PARAMS, 0, 0);
    }
    u64 slice = (p->area_size / p->ncpus) & ~0xfffUL;
    u64 pages = slice >> 12;
    u8 *base = (u8 *)(p->area_start + cpu * slice);
    u64 sum = 0x9e3779b97f4a7c15UL ^ cpu;
    u64 rng = p->seed * 0x2545f4914f6cdd1dUL + cpu + 1;
    u64 hot_pages = pages * p->hot_percent / 100;
    if (hot_pages == 0) hot_pages = 1;
    int io_on = cpu == 0 && (p->disk_sectors || p->net_frames);
    if ((p->disk_sectors || p->net_frames) &&
        (!p->timer_hz || p->disk_sectors % TG_DISK_CHUNK_SECTORS)) {
        for (;;) report(r, cpu, TG_CODE_BAD_PARAMS, 0, 0);
    }
    if (cpu == 0) serial_puts("thaw-testguest: start\n");
    if (p->timer_hz) start_timer(p->timer_hz);
    if (io_on) {
        struct io_work w = {p->disk_sectors, p->disk_passes, p->net_frames, p->timer_hz / 10 + 1};
        if (!io_start(&w)) device_failed(r, cpu);
    }
    r->slice_pages = pages;
    report(r, cpu, TG_CODE_START, sum, 0);
    if (pages == 0) {
        for (;;) report(r, cpu, TG_CODE_BAD_PARAMS, 0, 0);
    }

    u64 cur = 0;
    if (p->pattern == TG_PATTERN_POINTER_CHASE) {
        /* Sattolo's algorithm builds one cycle through all pages; word 0 of each page holds the
         * index of the next page, word 1 is the data the chase reads and rewrites. */
        for (u64 i = 0; i < pages; i++) *(u64 *)(base + (i << 12)) = i;
        for (u64 i = pages - 1; i > 0; i--) {
            u64 j = xorshift(&rng) % i;
            u64 *a = (u64 *)(base + (i << 12));
            u64 *b = (u64 *)(base + (j << 12));
            u64 t = *a;
            *a = *b;
            *b = t;
        }
    }

    for (u64 t = 0; t < p->touches_per_cpu; t++) {
        u64 page;
        switch (p->pattern) {
        case TG_PATTERN_SEQUENTIAL:
            page = t % pages;
            break;
        case TG_PATTERN_RANDOM:
            page = xorshift(&rng) % pages;
            break;
        case TG_PATTERN_HOTSET: {
            u64 x = xorshift(&rng);
            page = (x % 100 < 90) ? (x >> 8) % hot_pages : (x >> 8) % pages;
            break;
        }
        default:
            cur = *(u64 *)(base + (cur << 12));
            page = cur;
            break;
        }
        if (p->timer_hz && (t & (TG_HOLD_STRETCH - 1)) == 0)
            lapic_write(TG_LAPIC_TPR, (t / TG_HOLD_STRETCH) & 1 ? TG_TIMER_VECTOR & 0xf0 : 0);
        u64 *word = (u64 *)(base + (page << 12) + 8);
        *word = mix(&sum, *word, page);
        if (p->report_every && (t + 1) % p->report_every == 0)
            report(r, cpu, TG_CODE_PROGRESS, sum, t + 1);
        if (io_on && (t & (TG_IO_POLL_EVERY - 1)) == 0 && io_poll() > TG_IO_DONE)
            device_failed(r, cpu);
    }
    if (io_on) {
        /* The last touches never hold the timer off. */
        lapic_write(TG_LAPIC_TPR, 0);
        for (;;) {
            u64 status = io_poll();
            if (status == TG_IO_DONE) break;
            if (status != TG_IO_RUNNING) device_failed(r, cpu);
            __asm__ volatile("pause");
        }
    }
    if (cpu == 0) serial_puts("thaw-testguest: done\n");
    for (;;) report(r, cpu, TG_CODE_DONE, sum, p->touches_per_cpu);
}
