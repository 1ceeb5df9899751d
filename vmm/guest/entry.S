/* Entry point of the thaw test guest. The vmm starts every vCPU here in 64-bit mode at CPL3
 * with RDI = parameter page, RSI = vCPU index and RSP = the top of that vCPU's stack. */
#include "layout.h"

    .section .text.entry, "ax"
    .globl _start
_start:
    andq $-16, %rsp
    call guest_main
1:  jmp 1b

/* The LAPIC timer's handler (interrupt mode), at a fixed offset so the vmm can point the IDT at
 * it. It runs at CPL0, where this KVM emulates every instruction (about 1 us each), so it does
 * the least: count a tick in the word at the bottom of this vCPU's kernel stack, end the
 * interrupt at the LAPIC, return. The flags it changes are restored by iretq. */
    .org TG_TIMER_HANDLER_OFFSET
    .globl timer_handler
timer_handler:
    pushq %rax
    movq %rsp, %rax
    andq $-TG_KSTACK_SIZE, %rax
    incq (%rax)
    movl $(TG_LAPIC_BASE + TG_LAPIC_EOI), %eax
    movl $0, (%rax)
    popq %rax
    iretq

/* Device mode: the virtio devices' interrupts (all on one vector, routed to vCPU 0 by the
 * IOAPIC) are counted the same way, in the second word of the kernel stack. The driver looks at
 * its rings when the count moves. */
    .org TG_DEVICE_HANDLER_OFFSET
    .globl device_handler
device_handler:
    pushq %rax
    movq %rsp, %rax
    andq $-TG_KSTACK_SIZE, %rax
    incq 8(%rax)
    movl $(TG_LAPIC_BASE + TG_LAPIC_EOI), %eax
    movl $0, (%rax)
    popq %rax
    iretq

    .section .note.GNU-stack, "", @progbits
