/* Guest-physical layout shared by the test guest and the vmm (src/boot/testguest.rs mirrors it). */
#ifdef __ASSEMBLER__
#define TG_U64(x) x
#else
#define TG_U64(x) x##UL
#endif

#define TG_GDT_ADDR TG_U64(0x1000)
#define TG_IDT_ADDR TG_U64(0x2000)
#define TG_PARAMS_ADDR TG_U64(0x3000)
#define TG_REPORT_ADDR TG_U64(0x4000)
#define TG_REPORT_STRIDE TG_U64(64)
#define TG_PARAMS_MAGIC TG_U64(0x5448415754475031) /* "THAWTGP1" */
#define TG_PORT 0x0f00

/* Interrupt mode: every vCPU has a kernel stack of TG_KSTACK_SIZE bytes (its TSS's RSP0 is the
 * top); the first word at its bottom counts that vCPU's timer ticks. */
#define TG_KSTACKS_ADDR TG_U64(0x8000)
#define TG_KSTACK_SIZE TG_U64(0x400)
#define TG_TIMER_VECTOR 0x40
/* The timer handler's offset in the image (entry.S places it there with .org). */
#define TG_TIMER_HANDLER_OFFSET 0x40
/* The local APIC's registers (xAPIC, memory-mapped) and its timer's clock: KVM's APIC bus
 * runs at 1 GHz. */
#define TG_LAPIC_BASE TG_U64(0xfee00000)
#define TG_LAPIC_TPR 0x80
#define TG_LAPIC_EOI 0xb0
#define TG_LAPIC_SVR 0xf0
#define TG_LAPIC_LVT_TIMER 0x320
#define TG_LAPIC_TIMER_INITIAL 0x380
#define TG_LAPIC_TIMER_DIVIDE 0x3e0
#define TG_LAPIC_HZ TG_U64(1000000000)
/* Interrupt mode: every other stretch of this many touches runs with the LAPIC's task priority
 * at the timer's, so ticks wait in the IRR as behind a `cli`. */
#define TG_HOLD_STRETCH TG_U64(0x100000)

#define TG_PATTERN_SEQUENTIAL 0
#define TG_PATTERN_RANDOM 1
#define TG_PATTERN_HOTSET 2
#define TG_PATTERN_POINTER_CHASE 3

#define TG_CODE_START 1
#define TG_CODE_PROGRESS 2
#define TG_CODE_DONE 3
#define TG_CODE_BAD_PARAMS 4
