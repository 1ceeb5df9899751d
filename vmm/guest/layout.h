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
#define TG_LAPIC_LVT_LINT0 0x350
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
/* Device mode: a driver failed; the device report says how (TG_IO_*). */
#define TG_CODE_DEVICE_ERROR 5

/* Device mode: vCPU 0 drives the first virtio-blk and the first virtio-net device among the
 * first TG_VIRTIO_SCAN virtio-mmio windows (the vmm puts window i at TG_VIRTIO_BASE + i *
 * TG_VIRTIO_STRIDE on IOAPIC pin 5, 6, 7, then 10, ...). Their interrupts arrive on
 * TG_DEVICE_VECTOR, whose CPL0 handler counts them in the second word of vCPU 0's kernel stack.
 * Rings, buffers and the device report live in TG_IO_ADDR..TG_AREA_START, outside the data area
 * the memory checksum covers. */
#define TG_VIRTIO_BASE TG_U64(0xd0000000)
#define TG_VIRTIO_STRIDE TG_U64(0x1000)
#define TG_VIRTIO_SCAN 4
#define TG_IOAPIC_BASE TG_U64(0xfec00000)
#define TG_DEVICE_VECTOR 0x50
#define TG_DEVICE_HANDLER_OFFSET 0x80
#define TG_IO_ADDR TG_U64(0x180000)
#define TG_AREA_START TG_U64(0x200000)
/* The device report (struct io_report in devices.c), read by the host at the end. */
#define TG_IO_REPORT_ADDR (TG_IO_ADDR + 0x7f000)
/* Disk: requests of this many 512-byte sectors. */
#define TG_DISK_CHUNK_SECTORS 8
/* Network: frames of this ethertype carry TG_NET_CHUNK stream bytes each; the peer answers with
 * cumulative acknowledgements. At most TG_NET_WINDOW frames are unacknowledged. */
#define TG_NET_ETHERTYPE 0x88b5
#define TG_NET_CHUNK 1024
#define TG_NET_WINDOW 8
#define TG_NET_KIND_DATA 1
#define TG_NET_KIND_ACK 2

/* Device report status (io_report.status). */
#define TG_IO_RUNNING 0
#define TG_IO_DONE 1
#define TG_IO_NO_DISK 2
#define TG_IO_DISK_TOO_SMALL 3
#define TG_IO_DISK_STATUS 4
#define TG_IO_DISK_MISMATCH 5
#define TG_IO_NO_NET 6
#define TG_IO_FEATURES 7
#define TG_IO_QUEUE 8
#define TG_IO_NEEDS_RESET 9
