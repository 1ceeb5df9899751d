//! TLS 1.3 for the block protocol: QUIC endpoint configurations for block
//! servers and clients, mutual TLS when a client CA is configured, and a
//! development PKI (a CA, a server and a client certificate) made with rcgen.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use crate::wire::ALPN;

/// The name block servers' certificates carry and clients expect.
pub const SERVER_NAME: &str = "thaw-block-server";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: no PEM {kind} found")]
    NoPem { what: String, kind: &'static str },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
    #[error("QUIC crypto configuration: {0}")]
    Quic(String),
    #[error("generating certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// PEM text of a certificate chain and its private key.
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Identity {
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
        })
    }
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

pub fn read_pem_file(path: &Path) -> Result<String, TlsError> {
    read(path)
}

fn certs(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoPem {
            what: what.to_owned(),
            kind: "certificate",
        });
    }
    Ok(certs)
}

fn key(pem: &str, what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoPem {
            what: what.to_owned(),
            kind: "private key",
        })
}

fn roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca_pem, "CA")? {
        roots.add(c)?;
    }
    Ok(roots)
}

/// ring's provider with AES-128-GCM preferred: every packet is sealed and
/// opened, and AES-128 (10 rounds) costs less per byte than AES-256 (14)
/// while staying a TLS 1.3 mandatory suite. The other suites stay allowed.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// The congestion window a connection starts with: ten of the largest
/// datagrams the endpoints send (RFC 9002's ten datagrams, counted at the
/// jumbo size MTU discovery reaches).
///
/// quinn's default, 14,720 bytes, is fixed in bytes. Once MTU discovery
/// reaches 8972-byte datagrams, it holds only one of them in flight (quinn
/// sends while in-flight plus the next datagram stays below the window). The
/// receiver acknowledges every second packet or after its 25 ms ACK delay.
/// So the first response bigger than one datagram on an idle connection
/// stalled 25 ms: measured here, a restore's 88 KB manifest over the rack
/// link took 28-29 ms, and 2 ms with this window.
pub const INITIAL_WINDOW_BYTES: u64 = 10 * crate::endpoint::MAX_UDP_PAYLOAD as u64;

/// Transport tuned for bulk block traffic: large flow-control windows so one
/// connection can fill a fast link, many concurrent request streams, and
/// streams of one priority sent in order.
///
/// MTU discovery probes up to the endpoints' datagram ceiling
/// ([`crate::endpoint::MAX_UDP_PAYLOAD`]), so a path takes the
/// largest datagrams it carries; the congestion window starts at
/// [`INITIAL_WINDOW_BYTES`].
fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    let mut congestion = quinn::congestion::CubicConfig::default();
    congestion.initial_window(INITIAL_WINDOW_BYTES);
    t.congestion_controller_factory(Arc::new(congestion));
    t.max_concurrent_bidi_streams(4096u32.into())
        .stream_receive_window((8u32 << 20).into())
        .receive_window((64u32 << 20).into())
        .send_window(64 << 20)
        .keep_alive_interval(Some(Duration::from_secs(5)))
        // Responses of one priority go out in the order they were written,
        // not round-robin: each block completes as early as it can (a
        // streamed block is useful only whole), and frames are fewer and
        // larger. Higher priorities still go first. Measured here: `thaw
        // bench stream` 0.46-0.49 GB/s at 3.3-3.4 CPU-s/GB against
        // 0.43 at 3.9 round-robin; `thaw-bench restore` (thaw, 4 workloads
        // over rack and region) 7-11% less overhead in sum.
        .send_fairness(false);
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(crate::endpoint::MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    Arc::new(t)
}

/// Server configuration; with `client_ca`, clients must present a
/// certificate signed by it (mutual TLS).
pub fn server_config(
    identity: &Identity,
    client_ca: Option<&str>,
) -> Result<quinn::ServerConfig, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut crypto = builder.with_single_cert(
        certs(&identity.cert_pem, "server certificate")?,
        key(&identity.key_pem, "server key")?,
    )?;
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(crypto).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport());
    Ok(config)
}

/// Client configuration trusting `ca_pem`, presenting `identity` if given.
pub fn client_config(
    ca_pem: &str,
    identity: Option<&Identity>,
) -> Result<quinn::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_pem)?);
    let mut crypto = match identity {
        Some(id) => builder.with_client_auth_cert(
            certs(&id.cert_pem, "client certificate")?,
            key(&id.key_pem, "client key")?,
        )?,
        None => builder.with_no_client_auth(),
    };
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(crypto).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport());
    Ok(config)
}

/// A development PKI: one CA, a server identity for [`SERVER_NAME`] (and
/// localhost), and a client identity, all signed by the CA.
#[derive(Clone)]
pub struct DevPki {
    pub ca_pem: String,
    pub server: Identity,
    pub client: Identity,
}

impl DevPki {
    pub fn generate() -> Result<Self, TlsError> {
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "thaw development CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = rcgen::KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let leaf = |names: Vec<String>| -> Result<Identity, TlsError> {
            let params = rcgen::CertificateParams::new(names)?;
            let key = rcgen::KeyPair::generate()?;
            let cert = params.signed_by(&key, &issuer)?;
            Ok(Identity {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            })
        };
        Ok(Self {
            ca_pem: ca_cert.pem(),
            server: leaf(vec![SERVER_NAME.into(), "localhost".into()])?,
            client: leaf(vec!["thaw-fetch-agent".into()])?,
        })
    }

    /// Loads the PKI that [`DevPki::write_to`] wrote into `dir`, or
    /// generates one and writes it there on first use.
    pub fn load_or_generate(dir: &Path) -> Result<Self, TlsError> {
        if dir.join("ca.pem").exists() {
            return Ok(Self {
                ca_pem: read_pem_file(&dir.join("ca.pem"))?,
                server: Identity::from_files(&dir.join("server.pem"), &dir.join("server.key"))?,
                client: Identity::from_files(&dir.join("client.pem"), &dir.join("client.key"))?,
            });
        }
        let pki = Self::generate()?;
        pki.write_to(dir)?;
        Ok(pki)
    }

    /// Writes `ca.pem`, `server.pem`, `server.key`, `client.pem`,
    /// `client.key` into `dir`: the directory 0700 and the keys 0600, so
    /// other local users can neither read the keys nor swap the files.
    pub fn write_to(&self, dir: &Path) -> Result<(), TlsError> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        let failed = |path: &Path| {
            let path = path.to_owned();
            move |source| TlsError::Write { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(failed(dir))?;
        // An existing directory keeps its mode through create: set it.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(failed(dir))?;
        let write = |name: &str, text: &str, mode: u32| {
            let path = dir.join(name);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&path)
                .map_err(failed(&path))?;
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .and_then(|()| file.write_all(text.as_bytes()))
                .map_err(failed(&path))
        };
        write("ca.pem", &self.ca_pem, 0o644)?;
        write("server.pem", &self.server.cert_pem, 0o644)?;
        write("server.key", &self.server.key_pem, 0o600)?;
        write("client.pem", &self.client.cert_pem, 0o644)?;
        write("client.key", &self.client.key_pem, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::MAX_UDP_PAYLOAD;

    /// quinn sends a datagram only while in-flight plus it stays below the
    /// window, and a receiver acknowledges every second packet: a window of
    /// two datagrams or less leaves one in flight, waiting out the ACK delay.
    /// Three keep two in flight with room to spare.
    #[test]
    fn the_initial_window_holds_at_least_three_of_the_largest_datagrams() {
        let largest = MAX_UDP_PAYLOAD as u64;
        assert!(INITIAL_WINDOW_BYTES >= 3 * largest);
    }
}
