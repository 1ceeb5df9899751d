/* Device mode of the test guest: small virtio-blk and virtio-net drivers (devices.c). */
#ifndef TG_DEVICES_H
#define TG_DEVICES_H
#include "types.h"

struct params;

/* What the drivers need from the rest of the guest and keep between polls. */
struct io_work {
    u64 disk_sectors; /* sectors 0..disk_sectors are written and read back, each pass */
    u64 disk_passes;
    u64 net_frames; /* stream frames to deliver */
    u64 rto_ticks; /* retransmit unacknowledged frames after this many timer ticks */
};

/* The device report at TG_IO_REPORT_ADDR (the host reads it: src/boot/testguest.rs). */
struct io_report {
    volatile u64 status; /* TG_IO_* */
    volatile u64 disk_checksum;
    volatile u64 disk_requests;
    volatile u64 disk_passes_done;
    volatile u64 net_acked;
    volatile u64 net_transmitted;
    volatile u64 net_retransmits;
    volatile u64 net_received;
    volatile u64 device_interrupts;
    volatile u64 detail; /* with an error status: what failed (a sector, a status byte) */
};

/* Finds and sets up the devices; false (and the report says why) on failure. */
int io_start(const struct io_work *w);
/* Advances the disk and the network stream when there is something to look at (a device
 * interrupt or a timer tick since the last look). Returns TG_IO_RUNNING, TG_IO_DONE or an
 * error status. */
u64 io_poll(void);

#endif
