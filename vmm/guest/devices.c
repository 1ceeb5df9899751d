/* Device mode of the test guest: a virtio-blk and a virtio-net driver over virtio-mmio
 * (virtio 1.x, split rings, VERSION_1 negotiated), run by vCPU 0 between its page touches.
 *
 * Disk: pass after pass, sectors 0..disk_sectors are written in requests of
 * TG_DISK_CHUNK_SECTORS (sector s of pass p holds disk_word(s, p, w) in its word w) and each
 * request is read back and verified before the next; every word read back is folded into the
 * disk checksum. One request is in flight at a time.
 *
 * Network: a numbered stream of net_frames frames (broadcast, ethertype TG_NET_ETHERTYPE), frame
 * i carrying stream bytes i*TG_NET_CHUNK.. (stream_byte(k) each). A peer on the host answers with
 * cumulative acknowledgements (the next frame it wants). Go-back-N: up to TG_NET_WINDOW frames
 * unacknowledged; when the acknowledgements stop moving for rto_ticks timer ticks, sending starts
 * again from the first unacknowledged frame. Frames lost while the VM is checkpointed and moved
 * to another tap are sent again; the peer drops what it already has.
 *
 * Both devices interrupt vCPU 0 through the IOAPIC on TG_DEVICE_VECTOR; entry.S counts the
 * interrupts. A poll looks at the rings when that count or the timer tick count moved, and
 * acknowledges the interrupt at the device whose ring moved. All driver memory is in
 * TG_IO_ADDR..TG_AREA_START, outside the data area. The host mirrors disk_word, stream_byte and
 * the disk checksum in src/boot/testguest/model.rs. */
#include "devices.h"
#include "layout.h"

/* virtio-mmio registers (the "version 2" layout). */
#define VM_MAGIC 0x000
#define VM_VERSION 0x004
#define VM_DEVICE_ID 0x008
#define VM_DEVICE_FEATURES 0x010
#define VM_DEVICE_FEATURES_SEL 0x014
#define VM_DRIVER_FEATURES 0x020
#define VM_DRIVER_FEATURES_SEL 0x024
#define VM_QUEUE_SEL 0x030
#define VM_QUEUE_NUM_MAX 0x034
#define VM_QUEUE_NUM 0x038
#define VM_QUEUE_READY 0x044
#define VM_QUEUE_NOTIFY 0x050
#define VM_INTERRUPT_ACK 0x064
#define VM_STATUS 0x070
#define VM_QUEUE_DESC 0x080
#define VM_QUEUE_DRIVER 0x090
#define VM_QUEUE_DEVICE 0x0a0
#define VM_CONFIG 0x100
#define VIRTIO_MAGIC 0x74726976 /* "virt" */

#define ST_ACKNOWLEDGE 1
#define ST_DRIVER 2
#define ST_DRIVER_OK 4
#define ST_FEATURES_OK 8
#define ST_NEEDS_RESET 64

#define ID_NET 1
#define ID_BLOCK 2
#define NET_F_MAC (1u << 5)

#define QSIZE 16
#define DESC_NEXT 1
#define DESC_WRITE 2

#define BLK_T_IN 0
#define BLK_T_OUT 1
#define SECTOR 512
#define NET_HDR 12 /* struct virtio_net_hdr with num_buffers (VERSION_1) */
#define ETH_HDR 14
#define NET_SLOT 2048

/* Where everything lives in the I/O area. */
#define DISK_QUEUE (TG_IO_ADDR + 0x0000)
#define RX_QUEUE (TG_IO_ADDR + 0x1000)
#define TX_QUEUE (TG_IO_ADDR + 0x2000)
#define DISK_HEADER (TG_IO_ADDR + 0x3000)
#define DISK_STATUS (TG_IO_ADDR + 0x3010)
#define DISK_DATA (TG_IO_ADDR + 0x4000)
#define RX_BUFFERS (TG_IO_ADDR + 0x8000)
#define TX_BUFFERS (TG_IO_ADDR + 0x10000)

struct desc {
    u64 addr;
    u32 len;
    u16 flags;
    u16 next;
};
struct avail {
    u16 flags;
    u16 idx;
    u16 ring[QSIZE];
};
struct used_elem {
    u32 id;
    u32 len;
};
struct used {
    u16 flags;
    u16 idx;
    struct used_elem ring[QSIZE];
};

/* A split virtqueue in one page: descriptors, then the available ring, then the used ring. */
struct vq {
    u64 mmio;
    u32 index;
    volatile struct desc *desc;
    volatile struct avail *avail;
    volatile struct used *used;
    u16 next_avail; /* the available index the driver publishes next */
    u16 seen_used; /* used entries the driver has consumed */
};

struct blk_header {
    u32 type;
    u32 reserved;
    u64 sector;
};

static struct {
    struct io_work w;
    u64 disk_mmio, net_mmio;
    struct vq disk_q, rx_q, tx_q;
    /* Disk: the request in flight (if busy) or the next one. */
    u64 pass, chunk, chunks;
    int reading, busy;
    u64 busy_since;
    u64 disk_sum;
    /* Network. */
    u8 mac[6];
    u64 acked, next, progress_tick;
    /* Poll gating. */
    int looked;
    u64 irqs_seen, ticks_seen;
} io;

#define REPORT ((struct io_report *)TG_IO_REPORT_ADDR)

static inline u32 rd(u64 base, u32 reg) {
    return *(volatile u32 *)(base + reg);
}
static inline void wr(u64 base, u32 reg, u32 v) {
    *(volatile u32 *)(base + reg) = v;
}
static inline void barrier(void) {
    __asm__ volatile("" ::: "memory");
}
static inline u64 timer_ticks(void) {
    return *(volatile u64 *)TG_KSTACKS_ADDR;
}
static inline u64 device_irqs(void) {
    return *(volatile u64 *)(TG_KSTACKS_ADDR + 8);
}

static u64 fail(u64 status, u64 detail) {
    REPORT->detail = detail;
    REPORT->status = status;
    return status;
}

/* Word w of sector s after pass p (the host's model has the same function). */
static inline u64 disk_word(u64 s, u64 p, u64 w) {
    u64 x = ((s << 24) ^ (p << 8) ^ w) * 0x9e3779b97f4a7c15UL;
    return x ^ (x >> 31);
}

/* Byte k of the network stream. */
static inline u8 stream_byte(u64 k) {
    return (u8)((k * 7) ^ ((k >> 8) * 131) ^ (k >> 16) ^ 0x5a);
}

/* IOAPIC pin `pin` delivers `vector` to APIC ID 0: fixed, physical, edge, active high. */
static void ioapic_route(u32 pin, u32 vector) {
    volatile u32 *sel = (volatile u32 *)TG_IOAPIC_BASE;
    volatile u32 *win = (volatile u32 *)(TG_IOAPIC_BASE + 0x10);
    *sel = 0x11 + 2 * pin;
    *win = 0;
    *sel = 0x10 + 2 * pin;
    *win = vector;
}

/* The IOAPIC pin of virtio-mmio window i (the vmm's placement: 5, 6, 7, then 10, ...). */
static u32 window_pin(u32 i) {
    return i < 3 ? 5 + i : 7 + i;
}

static void vq_init(struct vq *q, u64 mmio, u32 index, u64 page) {
    q->mmio = mmio;
    q->index = index;
    q->desc = (volatile struct desc *)page;
    q->avail = (volatile struct avail *)(page + 0x100);
    q->used = (volatile struct used *)(page + 0x200);
    q->next_avail = 0;
    q->seen_used = 0;
    wr(mmio, VM_QUEUE_SEL, index);
    wr(mmio, VM_QUEUE_NUM, QSIZE);
    wr(mmio, VM_QUEUE_DESC, (u32)page);
    wr(mmio, VM_QUEUE_DESC + 4, 0);
    wr(mmio, VM_QUEUE_DRIVER, (u32)(page + 0x100));
    wr(mmio, VM_QUEUE_DRIVER + 4, 0);
    wr(mmio, VM_QUEUE_DEVICE, (u32)(page + 0x200));
    wr(mmio, VM_QUEUE_DEVICE + 4, 0);
    wr(mmio, VM_QUEUE_READY, 1);
}

/* Makes descriptor chain `head` available and tells the device. */
static void vq_publish(struct vq *q, u16 head, int notify) {
    q->avail->ring[q->next_avail % QSIZE] = head;
    q->next_avail++;
    barrier();
    q->avail->idx = q->next_avail;
    barrier();
    if (notify) wr(q->mmio, VM_QUEUE_NOTIFY, q->index);
}

/* Resets the device at `mmio`, negotiates VERSION_1 plus `want` (low feature word) and sets up
 * `nq` queues of QSIZE at the pages in `pages`. */
static u64 device_init(u64 mmio, u32 want, u32 nq, struct vq *qs[], const u64 pages[]) {
    wr(mmio, VM_STATUS, 0);
    wr(mmio, VM_STATUS, ST_ACKNOWLEDGE);
    wr(mmio, VM_STATUS, ST_ACKNOWLEDGE | ST_DRIVER);
    wr(mmio, VM_DEVICE_FEATURES_SEL, 1);
    if (!(rd(mmio, VM_DEVICE_FEATURES) & 1)) return fail(TG_IO_FEATURES, mmio);
    wr(mmio, VM_DEVICE_FEATURES_SEL, 0);
    u32 low = rd(mmio, VM_DEVICE_FEATURES) & want;
    wr(mmio, VM_DRIVER_FEATURES_SEL, 0);
    wr(mmio, VM_DRIVER_FEATURES, low);
    wr(mmio, VM_DRIVER_FEATURES_SEL, 1);
    wr(mmio, VM_DRIVER_FEATURES, 1); /* VERSION_1 */
    wr(mmio, VM_STATUS, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK);
    if (!(rd(mmio, VM_STATUS) & ST_FEATURES_OK)) return fail(TG_IO_FEATURES, mmio);
    for (u32 i = 0; i < nq; i++) {
        wr(mmio, VM_QUEUE_SEL, i);
        if (rd(mmio, VM_QUEUE_NUM_MAX) < QSIZE) return fail(TG_IO_QUEUE, mmio + i);
        vq_init(qs[i], mmio, i, pages[i]);
    }
    wr(mmio, VM_STATUS, ST_ACKNOWLEDGE | ST_DRIVER | ST_FEATURES_OK | ST_DRIVER_OK);
    return TG_IO_RUNNING;
}

static void disk_submit(void) {
    volatile struct blk_header *h = (volatile struct blk_header *)DISK_HEADER;
    u64 first = io.chunk * TG_DISK_CHUNK_SECTORS;
    h->type = io.reading ? BLK_T_IN : BLK_T_OUT;
    h->reserved = 0;
    h->sector = first;
    volatile u64 *data = (volatile u64 *)DISK_DATA;
    for (u64 s = 0; s < TG_DISK_CHUNK_SECTORS; s++)
        for (u64 w = 0; w < SECTOR / 8; w++)
            data[s * (SECTOR / 8) + w] = io.reading ? 0 : disk_word(first + s, io.pass, w);
    *(volatile u8 *)DISK_STATUS = 0xff;
    volatile struct desc *d = io.disk_q.desc;
    d[0] = (struct desc){DISK_HEADER, sizeof(struct blk_header), DESC_NEXT, 1};
    d[1] = (struct desc){DISK_DATA, TG_DISK_CHUNK_SECTORS * SECTOR,
                         DESC_NEXT | (io.reading ? DESC_WRITE : 0), 2};
    d[2] = (struct desc){DISK_STATUS, 1, DESC_WRITE, 0};
    io.busy = 1;
    io.busy_since = timer_ticks();
    vq_publish(&io.disk_q, 0, 1);
}

/* Finishes the request in flight if the device has used it, then submits the next. */
static u64 disk_step(u64 now) {
    struct vq *q = &io.disk_q;
    if (io.busy) {
        if (q->used->idx == q->seen_used) {
            /* Nothing back for long: has the device given up on the queue? */
            if (now - io.busy_since > 10 * io.w.rto_ticks && (rd(io.disk_mmio, VM_STATUS) & ST_NEEDS_RESET))
                return fail(TG_IO_NEEDS_RESET, io.disk_mmio);
            return TG_IO_RUNNING;
        }
        wr(io.disk_mmio, VM_INTERRUPT_ACK, 1);
        q->seen_used++;
        io.busy = 0;
        REPORT->disk_requests++;
        u8 status = *(volatile u8 *)DISK_STATUS;
        u64 first = io.chunk * TG_DISK_CHUNK_SECTORS;
        if (status != 0) return fail(TG_IO_DISK_STATUS, (first << 8) | status);
        if (io.reading) {
            volatile u64 *data = (volatile u64 *)DISK_DATA;
            for (u64 s = 0; s < TG_DISK_CHUNK_SECTORS; s++) {
                for (u64 w = 0; w < SECTOR / 8; w++) {
                    u64 v = data[s * (SECTOR / 8) + w];
                    if (v != disk_word(first + s, io.pass, w)) return fail(TG_IO_DISK_MISMATCH, first + s);
                    u64 x = (io.disk_sum ^ v) * 0x100000001b3UL;
                    io.disk_sum = x ^ (x >> 29);
                }
            }
            REPORT->disk_checksum = io.disk_sum;
            io.reading = 0;
            if (++io.chunk == io.chunks) {
                io.chunk = 0;
                io.pass++;
                REPORT->disk_passes_done = io.pass;
            }
        } else {
            io.reading = 1;
        }
    }
    if (io.pass < io.w.disk_passes) disk_submit();
    return TG_IO_RUNNING;
}

/* Frame `seq` of the stream into transmit slot `slot`. */
static void net_fill(u16 slot, u64 seq) {
    u8 *b = (u8 *)(TX_BUFFERS + (u64)slot * NET_SLOT);
    for (int i = 0; i < NET_HDR; i++) b[i] = 0;
    u8 *f = b + NET_HDR;
    for (int i = 0; i < 6; i++) {
        f[i] = 0xff;
        f[6 + i] = io.mac[i];
    }
    f[12] = TG_NET_ETHERTYPE >> 8;
    f[13] = TG_NET_ETHERTYPE & 0xff;
    u32 *h = (u32 *)(f + ETH_HDR);
    h[0] = TG_NET_KIND_DATA;
    h[1] = (u32)seq;
    h[2] = (u32)io.w.net_frames;
    h[3] = TG_NET_CHUNK;
    u8 *payload = (u8 *)(h + 4);
    u64 k = seq * TG_NET_CHUNK;
    for (u64 i = 0; i < TG_NET_CHUNK; i++) payload[i] = stream_byte(k + i);
    volatile struct desc *d = &io.tx_q.desc[slot];
    d->addr = (u64)b;
    d->len = NET_HDR + ETH_HDR + 16 + TG_NET_CHUNK;
    d->flags = 0;
    d->next = 0;
}

/* An acknowledgement in receive buffer `id` (`len` bytes with the virtio-net header). */
static void net_receive(u32 id, u32 len, u64 now) {
    REPORT->net_received++;
    if (id >= QSIZE || len < NET_HDR + ETH_HDR + 8) return;
    const u8 *f = (const u8 *)(RX_BUFFERS + (u64)id * NET_SLOT + NET_HDR);
    if (f[12] != (TG_NET_ETHERTYPE >> 8) || f[13] != (TG_NET_ETHERTYPE & 0xff)) return;
    const u32 *h = (const u32 *)(f + ETH_HDR);
    if (h[0] != TG_NET_KIND_ACK) return;
    u64 ack = h[1];
    if (ack > io.acked && ack <= io.w.net_frames) {
        io.acked = ack;
        io.progress_tick = now;
        REPORT->net_acked = ack;
        if (io.next < ack) io.next = ack;
    }
}

static u64 net_step(u64 now) {
    struct vq *rx = &io.rx_q, *tx = &io.tx_q;
    u16 rx_used = rx->used->idx, tx_used = tx->used->idx;
    if (rx_used != rx->seen_used || tx_used != tx->seen_used) wr(io.net_mmio, VM_INTERRUPT_ACK, 1);
    tx->seen_used = tx_used;
    int reposted = 0;
    while (rx->seen_used != rx_used) {
        volatile struct used_elem *e = &rx->used->ring[rx->seen_used % QSIZE];
        u32 id = e->id;
        net_receive(id, e->len, now);
        rx->seen_used++;
        vq_publish(rx, (u16)(id % QSIZE), 0);
        reposted = 1;
    }
    if (reposted) wr(io.net_mmio, VM_QUEUE_NOTIFY, 0);

    if (io.acked < io.w.net_frames && now - io.progress_tick > io.w.rto_ticks) {
        io.next = io.acked;
        io.progress_tick = now;
        REPORT->net_retransmits++;
    }
    int sent = 0;
    while (io.next < io.w.net_frames && io.next < io.acked + TG_NET_WINDOW &&
           (u16)(tx->next_avail - tx->seen_used) < QSIZE) {
        u16 slot = tx->next_avail % QSIZE;
        net_fill(slot, io.next);
        vq_publish(tx, slot, 0);
        io.next++;
        REPORT->net_transmitted++;
        sent = 1;
    }
    if (sent) wr(io.net_mmio, VM_QUEUE_NOTIFY, 1);
    return TG_IO_RUNNING;
}

int io_start(const struct io_work *w) {
    io.w = *w;
    /* KVM resets the boot vCPU's LINT0 to ExtINT, unmasked: the 8259 PIC, which also sees
     * every GSI below 16, would deliver the devices' interrupts a second time at its
     * unprogrammed vector base. Only the IOAPIC's routes are wanted. */
    *(volatile u32 *)(TG_LAPIC_BASE + TG_LAPIC_LVT_LINT0) = 1u << 16;
    if (!w->disk_sectors) io.w.disk_passes = 0;
    u64 disk = 0, net = 0;
    u32 disk_pin = 0, net_pin = 0;
    for (u32 i = 0; i < TG_VIRTIO_SCAN; i++) {
        u64 base = TG_VIRTIO_BASE + i * TG_VIRTIO_STRIDE;
        if (rd(base, VM_MAGIC) != VIRTIO_MAGIC || rd(base, VM_VERSION) != 2) continue;
        u32 id = rd(base, VM_DEVICE_ID);
        if (id == ID_BLOCK && !disk) {
            disk = base;
            disk_pin = window_pin(i);
        } else if (id == ID_NET && !net) {
            net = base;
            net_pin = window_pin(i);
        }
    }
    if (w->disk_sectors) {
        if (!disk) {
            fail(TG_IO_NO_DISK, 0);
            return 0;
        }
        u64 capacity = rd(disk, VM_CONFIG) | ((u64)rd(disk, VM_CONFIG + 4) << 32);
        if (capacity < w->disk_sectors) {
            fail(TG_IO_DISK_TOO_SMALL, capacity);
            return 0;
        }
        struct vq *qs[1] = {&io.disk_q};
        const u64 pages[1] = {DISK_QUEUE};
        if (device_init(disk, 0, 1, qs, pages) != TG_IO_RUNNING) return 0;
        io.disk_mmio = disk;
        io.chunks = w->disk_sectors / TG_DISK_CHUNK_SECTORS;
        io.disk_sum = 0x6469736b;
        ioapic_route(disk_pin, TG_DEVICE_VECTOR);
    }
    if (w->net_frames) {
        if (!net) {
            fail(TG_IO_NO_NET, 0);
            return 0;
        }
        struct vq *qs[2] = {&io.rx_q, &io.tx_q};
        const u64 pages[2] = {RX_QUEUE, TX_QUEUE};
        if (device_init(net, NET_F_MAC, 2, qs, pages) != TG_IO_RUNNING) return 0;
        io.net_mmio = net;
        u32 m0 = rd(net, VM_CONFIG), m1 = rd(net, VM_CONFIG + 4);
        for (int i = 0; i < 4; i++) io.mac[i] = (u8)(m0 >> (8 * i));
        io.mac[4] = (u8)m1;
        io.mac[5] = (u8)(m1 >> 8);
        for (u16 i = 0; i < QSIZE; i++) {
            volatile struct desc *d = &io.rx_q.desc[i];
            d->addr = RX_BUFFERS + (u64)i * NET_SLOT;
            d->len = NET_SLOT;
            d->flags = DESC_WRITE;
            d->next = 0;
            vq_publish(&io.rx_q, i, 0);
        }
        wr(net, VM_QUEUE_NOTIFY, 0);
        io.progress_tick = timer_ticks();
        ioapic_route(net_pin, TG_DEVICE_VECTOR);
    }
    return 1;
}

u64 io_poll(void) {
    u64 status = REPORT->status;
    if (status != TG_IO_RUNNING) return status;
    u64 irqs = device_irqs(), now = timer_ticks();
    if (io.looked && irqs == io.irqs_seen && now == io.ticks_seen) return TG_IO_RUNNING;
    io.looked = 1;
    io.irqs_seen = irqs;
    io.ticks_seen = now;
    REPORT->device_interrupts = irqs;
    if (io.w.disk_sectors && disk_step(now) != TG_IO_RUNNING) return REPORT->status;
    if (io.w.net_frames && net_step(now) != TG_IO_RUNNING) return REPORT->status;
    if (io.pass >= io.w.disk_passes && io.acked >= io.w.net_frames) REPORT->status = TG_IO_DONE;
    return REPORT->status;
}
