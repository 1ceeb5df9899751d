//! One direction of an emulated link, sans I/O: a FIFO bottleneck of a fixed
//! rate with a tail-drop queue, followed by a fixed one-way delay.
//!
//! The caller passes every instant in; the model reads no clock.

use std::time::{Duration, Instant};

/// The smallest bottleneck queue a link gets (see [`LinkParams::from_rtt`]).
pub(crate) const MIN_BUFFER_BYTES: u64 = 256 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkParams {
    /// Propagation delay, added to every datagram after serialization.
    pub one_way_delay: Duration,
    /// Serialization rate of the bottleneck.
    pub bits_per_sec: u64,
    /// Bytes the bottleneck may hold waiting for serialization; a datagram
    /// that would take the queue past this is dropped.
    pub buffer_bytes: u64,
    /// Largest datagram (UDP payload) the path carries; larger ones are
    /// dropped.
    pub max_datagram_bytes: usize,
}

/// IPv4 plus UDP headers: what a UDP payload adds up to an IP packet.
pub(crate) const IPV4_UDP_HEADER_BYTES: usize = 28;
/// IPv6 plus UDP headers.
pub(crate) const IPV6_UDP_HEADER_BYTES: usize = 48;

impl LinkParams {
    /// One direction of a link with round trip `rtt` and rate `bits_per_sec`,
    /// with a buffer of max(2 × bandwidth-delay product, 256 KiB).
    ///
    /// Why that size: QUIC recovers from loss, but a buffer much below the
    /// bandwidth-delay product makes a bulk transfer spend its time in loss
    /// recovery, so the benchmark would measure the congestion controller
    /// rather than the link. Twice the BDP lets a sender's window overshoot
    /// without loss, as a well-provisioned switch port does; the floor keeps
    /// short-RTT links (rack: BDP 125 KB) from dropping a single burst of an
    /// initial window plus pacing jitter.
    ///
    /// Datagrams of any size pass; see [`LinkParams::with_mtu`].
    pub fn from_rtt(rtt: Duration, bits_per_sec: u64) -> Self {
        let bdp_bytes = rtt.as_nanos() * u128::from(bits_per_sec) / 8 / 1_000_000_000;
        let buffer_bytes = u64::try_from(2 * bdp_bytes)
            .unwrap_or(u64::MAX)
            .max(MIN_BUFFER_BYTES);
        Self {
            one_way_delay: rtt / 2,
            bits_per_sec,
            buffer_bytes,
            max_datagram_bytes: usize::MAX,
        }
    }

    /// Drops datagrams whose IP packet would exceed `mtu_bytes` given
    /// `header_bytes` of IP and UDP headers.
    pub fn with_mtu(mut self, mtu_bytes: usize, header_bytes: usize) -> Self {
        self.max_datagram_bytes = mtu_bytes.saturating_sub(header_bytes);
        self
    }

    /// Time to serialize `len` bytes, rounded up to whole nanoseconds so the
    /// rate is never exceeded.
    pub fn serialization(&self, len: usize) -> Duration {
        let bits = len as u128 * 8 * 1_000_000_000;
        let rate = u128::from(self.bits_per_sec.max(1));
        Duration::from_nanos(u64::try_from(bits.div_ceil(rate)).unwrap_or(u64::MAX))
    }

    /// Bytes the bottleneck serializes in `span` (rounded down).
    fn bytes_in(&self, span: Duration) -> u64 {
        let bytes = span.as_nanos() * u128::from(self.bits_per_sec) / 8 / 1_000_000_000;
        u64::try_from(bytes).unwrap_or(u64::MAX)
    }
}

/// What happens to a datagram offered to the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It leaves the far end at this instant.
    Depart(Instant),
    /// The bottleneck queue was full.
    Drop,
    /// Larger than the path's MTU.
    TooLarge,
}

#[derive(Debug)]
pub struct LinkModel {
    params: LinkParams,
    /// When the bottleneck finishes serializing what it has accepted.
    busy_until: Option<Instant>,
    /// Latest arrival seen; earlier instants are treated as this one so
    /// departures stay in order whatever the caller passes.
    last_arrival: Option<Instant>,
}

impl LinkModel {
    pub fn new(params: LinkParams) -> Self {
        Self {
            params,
            busy_until: None,
            last_arrival: None,
        }
    }

    pub fn params(&self) -> &LinkParams {
        &self.params
    }

    /// Bytes waiting for serialization at `now`.
    pub fn backlog_bytes(&self, now: Instant) -> u64 {
        match self.busy_until {
            Some(until) if until > now => self.params.bytes_in(until - now),
            _ => 0,
        }
    }

    /// A datagram of `len` bytes arrives at `at`.
    pub fn offer(&mut self, at: Instant, len: usize) -> Verdict {
        if len > self.params.max_datagram_bytes {
            return Verdict::TooLarge;
        }
        let at = self.last_arrival.map_or(at, |last| last.max(at));
        self.last_arrival = Some(at);
        if self.backlog_bytes(at) + len as u64 > self.params.buffer_bytes {
            return Verdict::Drop;
        }
        let start = self.busy_until.map_or(at, |busy| busy.max(at));
        let done = start + self.params.serialization(len);
        self.busy_until = Some(done);
        Verdict::Depart(done + self.params.one_way_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn params(one_way_us: u64, bits_per_sec: u64, buffer_bytes: u64) -> LinkParams {
        LinkParams {
            one_way_delay: Duration::from_micros(one_way_us),
            bits_per_sec,
            buffer_bytes,
            max_datagram_bytes: usize::MAX,
        }
    }

    #[test]
    fn buffer_is_twice_the_bdp_with_a_floor() {
        // rack: 10 Gbit/s × 100 µs = 125 KB; twice that is below the floor.
        let rack = LinkParams::from_rtt(Duration::from_micros(100), 10_000_000_000);
        assert_eq!(rack.buffer_bytes, MIN_BUFFER_BYTES);
        assert_eq!(rack.one_way_delay, Duration::from_micros(50));
        // region: 2.5 Gbit/s × 1 ms = 312.5 KB.
        let region = LinkParams::from_rtt(Duration::from_millis(1), 2_500_000_000);
        assert_eq!(region.buffer_bytes, 625_000);
    }

    #[test]
    fn idle_link_adds_serialization_and_delay() {
        let t0 = Instant::now();
        // 1000 bytes at 8 Mbit/s take 1 ms.
        let mut m = LinkModel::new(params(500, 8_000_000, 1 << 20));
        assert_eq!(
            m.offer(t0, 1000),
            Verdict::Depart(t0 + Duration::from_micros(1500))
        );
        // Queued behind the first: serialized from 1 ms to 2 ms.
        assert_eq!(
            m.offer(t0, 1000),
            Verdict::Depart(t0 + Duration::from_micros(2500))
        );
        // After the link drained, no queueing.
        let later = t0 + Duration::from_millis(10);
        assert_eq!(
            m.offer(later, 1000),
            Verdict::Depart(later + Duration::from_micros(1500))
        );
    }

    #[test]
    fn full_queue_drops_at_the_tail_then_recovers() {
        let t0 = Instant::now();
        let mut m = LinkModel::new(params(0, 8_000_000, 3000));
        for _ in 0..3 {
            assert!(matches!(m.offer(t0, 1000), Verdict::Depart(_)));
        }
        assert_eq!(m.backlog_bytes(t0), 3000);
        assert_eq!(m.offer(t0, 1), Verdict::Drop);
        // One datagram's time later there is room for one more.
        let t1 = t0 + Duration::from_millis(1);
        assert_eq!(m.backlog_bytes(t1), 2000);
        assert_eq!(
            m.offer(t1, 1000),
            Verdict::Depart(t0 + Duration::from_millis(4))
        );
        assert_eq!(m.offer(t1, 1000), Verdict::Drop);
    }

    #[test]
    fn datagrams_over_the_mtu_are_dropped_without_occupying_the_link() {
        let t0 = Instant::now();
        let p = params(0, 8_000_000, 1 << 20).with_mtu(1500, IPV4_UDP_HEADER_BYTES);
        assert_eq!(p.max_datagram_bytes, 1472);
        let mut m = LinkModel::new(p);
        assert_eq!(m.offer(t0, 1473), Verdict::TooLarge);
        assert_eq!(m.backlog_bytes(t0), 0);
        assert!(matches!(m.offer(t0, 1472), Verdict::Depart(_)));
    }

    #[test]
    fn serialization_rounds_up() {
        let p = params(0, 3_000_000_000, 0);
        // 1 byte at 3 Gbit/s is 2.67 ns.
        assert_eq!(p.serialization(1), Duration::from_nanos(3));
        assert_eq!(p.serialization(0), Duration::ZERO);
    }

    /// Arrivals as (gap since the previous one in ns, length) pairs.
    fn arrivals() -> impl Strategy<Value = Vec<(u64, usize)>> {
        prop::collection::vec((0u64..20_000, 1usize..1500), 1..400)
    }

    proptest! {
        #[test]
        fn departures_keep_order_respect_delay_and_rate(
            gaps in arrivals(),
            one_way_us in 0u64..2000,
            mbit in 1u64..20_000,
            buffer in 1500u64..1_000_000,
        ) {
            let p = params(one_way_us, mbit * 1_000_000, buffer);
            let mut m = LinkModel::new(p);
            let t0 = Instant::now();
            let mut at = t0;
            let mut sent: Vec<(Instant, usize)> = Vec::new();
            for (gap, len) in gaps {
                at += Duration::from_nanos(gap);
                match m.offer(at, len) {
                    Verdict::Depart(leaves) => {
                        prop_assert!(leaves >= at + p.one_way_delay + p.serialization(len));
                        if let Some(&(prev, _)) = sent.last() {
                            prop_assert!(leaves >= prev);
                        }
                        sent.push((leaves, len));
                    }
                    Verdict::Drop => {
                        prop_assert!(m.backlog_bytes(at) + len as u64 > buffer);
                    }
                    Verdict::TooLarge => prop_assert!(false, "no MTU set"),
                }
                prop_assert!(m.backlog_bytes(at) <= buffer);
            }
            // Between any two departures, the bytes of the later datagrams
            // fit in the time the rate allows.
            for i in 0..sent.len() {
                let mut bytes = 0u128;
                for j in i + 1..sent.len() {
                    bytes += sent[j].1 as u128;
                    let span = (sent[j].0 - sent[i].0).as_nanos();
                    prop_assert!(bytes * 8 * 1_000_000_000 <= span * u128::from(p.bits_per_sec));
                }
            }
        }
    }
}
