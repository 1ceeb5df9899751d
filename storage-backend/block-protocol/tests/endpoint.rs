//! Endpoints from `quic_endpoint` over loopback with real TLS: the path
//! grows to the largest datagram allowed and stays there under bulk load.
//!
//! Had a GSO batch exceeded the kernel's 64 KB send limit, every full batch
//! would be dropped: measured with ten 8972-byte segments per batch, quinn's
//! black-hole detection took the path back to 1200 bytes. Some loss is
//! expected even so: on loopback the only congestion signal a loss-based
//! controller gets is the receiver's socket buffer overflowing.

use thaw_block_protocol::endpoint::{self, MAX_UDP_PAYLOAD};
use thaw_block_protocol::tls::{self, DevPki, SERVER_NAME};

const CHUNK: usize = 1 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_sends_keep_jumbo_datagrams() {
    let pki = DevPki::generate().unwrap();
    let server_config = tls::server_config(&pki.server, Some(&pki.ca_pem)).unwrap();
    let server = endpoint::bind("127.0.0.1:0".parse().unwrap(), Some(server_config)).unwrap();
    let server_addr = server.local_addr().unwrap();
    let mut client = endpoint::bind("127.0.0.1:0".parse().unwrap(), None).unwrap();
    client.set_default_client_config(tls::client_config(&pki.ca_pem, Some(&pki.client)).unwrap());

    // The server sends 1 MiB per stream the client opens, until told to
    // stop; it returns its connection's path statistics.
    let sender = tokio::spawn(async move {
        let conn = server.accept().await.unwrap().await.unwrap();
        let chunk = bytes::Bytes::from(vec![0x5a; CHUNK]);
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let ask = recv.read_to_end(16).await.unwrap();
            if ask == b"stats" {
                let path = conn.stats().path;
                send.write_all(&path.current_mtu.to_le_bytes())
                    .await
                    .unwrap();
                send.write_all(&path.lost_packets.to_le_bytes())
                    .await
                    .unwrap();
                send.write_all(&path.sent_packets.to_le_bytes())
                    .await
                    .unwrap();
                send.finish().unwrap();
                let _ = send.stopped().await;
                continue;
            }
            send.write_chunk(chunk.clone()).await.unwrap();
            send.finish().unwrap();
        }
    });

    let conn = client
        .connect(server_addr, SERVER_NAME)
        .unwrap()
        .await
        .unwrap();
    let request = |ask: &'static [u8]| {
        let conn = conn.clone();
        async move {
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_all(ask).await.unwrap();
            send.finish().unwrap();
            recv.read_to_end(CHUNK).await.unwrap()
        }
    };
    let server_path = || async {
        let b = request(b"stats").await;
        let mtu = u16::from_le_bytes(b[0..2].try_into().unwrap());
        let lost = u64::from_le_bytes(b[2..10].try_into().unwrap());
        let sent = u64::from_le_bytes(b[10..18].try_into().unwrap());
        (mtu, lost, sent)
    };

    // MTU discovery probes while traffic flows; loopback carries any size.
    let mut rounds = 0;
    while server_path().await.0 < MAX_UDP_PAYLOAD {
        rounds += 1;
        assert!(rounds <= 100, "path MTU stuck below {MAX_UDP_PAYLOAD}");
        assert_eq!(request(b"data").await.len(), CHUNK);
    }
    let (_, lost_before, sent_before) = server_path().await;
    let received = futures::future::join_all((0..32).map(|_| request(b"data"))).await;
    assert!(received.iter().all(|r| r.len() == CHUNK));
    let (mtu, lost_after, sent_after) = server_path().await;
    assert_eq!(mtu, MAX_UDP_PAYLOAD);
    // 32 MiB in packets of the largest size, not of Ethernet size.
    let packets = sent_after - sent_before;
    assert!(
        packets < (32 * CHUNK / 4000) as u64,
        "{packets} packets for 32 MiB"
    );
    let lost = lost_after - lost_before;
    assert!(lost * 2 < packets, "{lost} of {packets} packets lost");
    conn.close(0u32.into(), b"done");
    let _ = sender.await;
}
