/* Entry point of the thaw test guest. The vmm starts every vCPU here in 64-bit mode at CPL3
 * with RDI = parameter page, RSI = vCPU index and RSP = the top of that vCPU's stack. */
    .section .text.entry, "ax"
    .globl _start
_start:
    andq $-16, %rsp
    call guest_main
1:  jmp 1b
    .section .note.GNU-stack, "", @progbits
