//! QUIC endpoints whose datagrams may grow past Ethernet size.
//!
//! Most of a QUIC sender's CPU goes per packet (packet-number bookkeeping,
//! AEAD set-up, header protection, the kernel's per-datagram work), so
//! fewer, larger datagrams carry a block for less. Endpoints here allow UDP
//! payloads up to [`MAX_UDP_PAYLOAD`]; MTU discovery then finds what each
//! path carries (loopback and jumbo-frame networks take it all, a 1500-byte
//! path stays at 1472), so nothing is sent that a path cannot take.
//!
//! One limit needs care: a GSO batch is sent as one UDP datagram of up to
//! 65,507 bytes, and quinn batches up to ten segments of the path MTU. Ten
//! 8972-byte segments exceed it: the kernel refuses the send with EMSGSIZE,
//! quinn-udp drops it silently as it would an oversized MTU probe, and
//! every full batch is lost. The socket here reports a segment count that keeps each batch
//! under the limit for the largest datagram allowed.
//!
//! The sockets also get large kernel buffers. A GSO batch arrives on
//! loopback as one 63 KB datagram, and the default 208 KiB receive buffer
//! holds three: a burst of a wide congestion window overflowed it and lost
//! 4.5% of a bulk transfer's packets (the kernel's `RcvbufErrors` counted
//! them), each loss cutting the window.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, Runtime, TokioRuntime, UdpPoller};

/// Largest UDP payload an endpoint sends or accepts: what a 9000-byte jumbo
/// frame carries after the IPv4 and UDP headers.
///
/// Measured with `thaw-bench stream` (loopback, one server thread), eight
/// rounds alternating, median GB/s and CPU-s/GB: 1472 bytes 0.59 at 2.88;
/// 6500 1.06 at 1.59; 9000 1.07 at 1.57; 13000 1.10 and 16000 1.09, both at
/// 1.57. Past jumbo size nothing is gained, and no real network carries it.
pub const MAX_UDP_PAYLOAD: u16 = 8972;

/// Kernel send and receive buffer asked for each socket. Linux caps it at
/// `net.core.rmem_max` / `wmem_max` (and doubles it for bookkeeping); hosts
/// serving a fleet should allow at least this much.
pub const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// Largest payload of one UDP send, GSO batches included: an IPv4 packet is
/// at most 65,535 bytes, of which 28 are IP and UDP headers.
const MAX_UDP_SEND: usize = 65_507;

/// Segments per GSO batch such that a batch of `payload`-byte datagrams
/// still fits one UDP send (at least one).
pub fn segments_per_send(payload: u16, socket_limit: usize) -> usize {
    (MAX_UDP_SEND / usize::from(payload).max(1)).clamp(1, socket_limit.max(1))
}

/// Endpoint configuration allowing datagrams up to [`MAX_UDP_PAYLOAD`].
fn endpoint_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .expect("MAX_UDP_PAYLOAD is within QUIC's bounds");
    config
}

/// A QUIC endpoint on `addr`, a server when `server` is given.
pub fn bind(addr: SocketAddr, server: Option<quinn::ServerConfig>) -> io::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(addr)?;
    size_buffers(&socket);
    let runtime = Arc::new(TokioRuntime);
    let inner = runtime.wrap_udp_socket(socket)?;
    let socket = Arc::new(BoundedBatches {
        max_segments: segments_per_send(MAX_UDP_PAYLOAD, inner.max_transmit_segments()),
        inner,
    });
    quinn::Endpoint::new_with_abstract_socket(endpoint_config(), server, socket, runtime)
}

/// Asks for [`SOCKET_BUFFER_BYTES`] each way; what the kernel grants is
/// logged, since a small receive buffer shows up only as packet loss.
fn size_buffers(socket: &std::net::UdpSocket) {
    let sock = socket2::SockRef::from(socket);
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    let granted = sock.recv_buffer_size().unwrap_or(0);
    if granted < SOCKET_BUFFER_BYTES {
        tracing::warn!(
            granted,
            wanted = SOCKET_BUFFER_BYTES,
            "UDP receive buffer capped by net.core.rmem_max; bursts may be lost"
        );
    } else {
        tracing::debug!(granted, "UDP socket buffers");
    }
}

/// The runtime's socket, with GSO batches capped to fit one UDP send.
struct BoundedBatches {
    inner: Arc<dyn AsyncUdpSocket>,
    max_segments: usize,
}

impl fmt::Debug for BoundedBatches {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundedBatches")
            .field("max_segments", &self.max_segments)
            .finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for BoundedBatches {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.max_segments
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_of_the_largest_datagrams_fits_one_udp_send() {
        let n = segments_per_send(MAX_UDP_PAYLOAD, 64);
        assert!(n * usize::from(MAX_UDP_PAYLOAD) <= MAX_UDP_SEND);
        assert!(n >= 1);
    }

    #[test]
    fn jumbo_datagrams_get_fewer_segments_and_the_socket_limit_holds() {
        assert_eq!(segments_per_send(8972, 64), 7);
        assert_eq!(segments_per_send(1472, 64), 44);
        assert_eq!(segments_per_send(1472, 10), 10);
        assert_eq!(segments_per_send(1472, 1), 1);
        assert_eq!(segments_per_send(65_527, 64), 1);
    }
}
