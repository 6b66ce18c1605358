//! TLS through redis-rs's rustls support, with the ring crypto provider (feature
//! `tls`).

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{AlertDescription as Alert, CertificateError as CertError, RootCertStore};

use super::TlsOptions;
use crate::error::{Error, Result};
use crate::keys::redact_url;

/// The most of the connect timeout kept to find out why a server that accepted the
/// TCP connection did not answer the TLS handshake.
const MAX_PROBE: Duration = Duration::from_millis(250);

/// redis-rs's `tls-rustls` brings rustls without a crypto provider, and rustls panics
/// on the first connection unless exactly one is chosen: ring becomes the process
/// default, but only when the application installed none (its choice stands).
fn install_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Another thread may install one between the check and this call; then that
        // one is the default, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

pub fn client(opts: &TlsOptions, url: &str) -> Result<redis::Client> {
    install_provider();
    let shown = redact_url(url);
    if url.trim_end().ends_with("#insecure") {
        log::warn!(
            "redis-mutex: {shown} ends in #insecure: the server's certificate is not checked, so anyone on the \
             path can pose as the server"
        );
    }
    if opts.root_cert.is_none() && opts.client_cert.is_none() {
        // The system's roots.
        return redis::Client::open(url).map_err(|e| Error::invalid_url(url, &e));
    }
    let certificates = redis::TlsCertificates {
        client_tls: opts
            .client_cert
            .as_ref()
            .map(|(cert, key)| redis::ClientTlsConfig { client_cert: cert.clone(), client_key: key.clone() }),
        root_cert: opts.root_cert.clone(),
    };
    // The PEM was checked already (`check`): an error here is the URL's.
    redis::Client::build_with_tls(url, certificates).map_err(|e| Error::invalid_url(url, &e))
}

fn invalid(option: &'static str, reason: String) -> Error {
    Error::InvalidOption { option, reason }
}

/// The certificates in `pem`, at least one.
fn certificates(pem: &[u8]) -> std::result::Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate found: expected PEM with `-----BEGIN CERTIFICATE-----`".into());
    }
    Ok(certs)
}

/// What is wrong with a private key's PEM, without quoting any of it.
fn key_reason(e: pem::Error) -> String {
    match e {
        pem::Error::NoItemsFound => "no private key found: expected an unencrypted key in PEM (`-----BEGIN PRIVATE \
                                     KEY-----`, or `RSA PRIVATE KEY`, `EC PRIVATE KEY`)"
            .into(),
        // The other errors may quote a line of the key.
        _ => "the private key is not valid PEM".into(),
    }
}

/// Checks that the PEM given to the builder parses, and that the client key signs with
/// ring and belongs to the client certificate.
pub fn check(opts: &TlsOptions) -> Result<()> {
    let mut roots = RootCertStore::empty();
    if let Some(pem) = &opts.root_cert {
        for cert in certificates(pem).map_err(|r| invalid("tls_root_cert", r))? {
            roots.add(cert).map_err(|e| invalid("tls_root_cert", format!("not a usable CA certificate: {e}")))?;
        }
    }
    if let Some((cert, key)) = &opts.client_cert {
        let chain = certificates(cert).map_err(|r| invalid("tls_client_cert", r))?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| invalid("tls_client_cert", key_reason(e)))?;
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("tls_client_cert", e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| invalid("tls_client_cert", format!("the key cannot be used with the certificate: {e}")))?;
    }
    Ok(())
}

/// What listens at a TLS URL's address answered in plain RESP: the URL names a
/// plain-TCP port.
#[derive(Debug)]
struct PlainTcp;

impl std::fmt::Display for PlainTcp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the server did not answer in TLS but in plain RESP")
    }
}

impl std::error::Error for PlainTcp {}

/// The server accepted the TCP connection but did not answer the TLS handshake (or the
/// commands that follow it) in time, and no plain-TCP Redis answered either.
#[derive(Debug)]
struct NoTlsAnswer(Duration);

impl std::fmt::Display for NoTlsAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the server accepted the TCP connection but sent no TLS answer within {:?}: it is paused or \
             overloaded, or the port does not serve TLS",
            self.0
        )
    }
}

impl std::error::Error for NoTlsAnswer {}

pub fn connect(client: &redis::Client, timeout: Duration) -> redis::RedisResult<redis::Connection> {
    let started = Instant::now();
    let handshake = timeout - (timeout / 4).min(MAX_PROBE);
    client.get_connection_with_timeout(handshake).map_err(|e| {
        // A read that timed out (`WouldBlock` on Unix; a connect that timed out is
        // `TimedOut`): the TCP connection stands but nothing came back. A plain-TCP
        // Redis waits for the end of a line that a TLS hello rarely holds.
        let read_timed_out = io_error(&e).is_some_and(|io| io.kind() == io::ErrorKind::WouldBlock);
        match client.get_connection_info().addr() {
            redis::ConnectionAddr::TcpTls { host, port, .. } if read_timed_out => {
                // What is left of `timeout`.
                let probe = timeout.saturating_sub(started.elapsed());
                if answers_plain_resp(host, *port, probe) {
                    io::Error::new(io::ErrorKind::InvalidData, PlainTcp).into()
                } else {
                    io::Error::new(io::ErrorKind::TimedOut, NoTlsAnswer(handshake)).into()
                }
            }
            _ => e,
        }
    })
}

/// Whether a plain-TCP Redis answers `PING` at `host:port` within `budget`. A TLS
/// port closes the connection or sends an alert instead.
fn answers_plain_resp(host: &str, port: u16, budget: Duration) -> bool {
    let deadline = Instant::now() + budget;
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let Ok(addrs) = (host, port).to_socket_addrs() else { return false };
    for addr in addrs {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, left()) else { continue };
        let mut first = [0u8; 1];
        let answered = s.set_read_timeout(Some(left())).is_ok()
            && s.set_write_timeout(Some(left())).is_ok()
            && s.write_all(b"PING\r\n").is_ok()
            && matches!(s.read(&mut first), Ok(1));
        // `+PONG`, or an error (`-NOAUTH`, `-DENIED`): plain RESP either way.
        return answered && matches!(first[0], b'+' | b'-');
    }
    false
}

/// The I/O error a redis error wraps, if any.
fn io_error(err: &redis::RedisError) -> Option<&io::Error> {
    std::error::Error::source(err)?
        .downcast_ref::<Arc<dyn std::error::Error + Send + Sync>>()?
        .downcast_ref::<io::Error>()
}

pub fn failure(err: &redis::RedisError) -> Option<String> {
    let inner = io_error(err)?.get_ref()?;
    if inner.is::<PlainTcp>() {
        return Some(
            "the server did not answer in TLS but in plain RESP: this is a plain-TCP port; use a `redis://` URL \
             for it, or the server's `tls-port`"
                .into(),
        );
    }
    let e = inner.downcast_ref::<rustls::Error>()?;
    let what = match e {
        rustls::Error::InvalidCertificate(CertError::UnknownIssuer | CertError::BadSignature) => {
            "the server's certificate is not signed by a CA this client trusts: give the CA that signed it to \
             `tls_root_cert` (without it, the system's roots are trusted)"
        }
        rustls::Error::InvalidCertificate(CertError::NotValidForName | CertError::NotValidForNameContext { .. }) => {
            "the server's certificate is not valid for the host name in the URL: connect by a name or address \
             the certificate lists"
        }
        rustls::Error::InvalidCertificate(
            CertError::Expired
            | CertError::ExpiredContext { .. }
            | CertError::NotValidYet
            | CertError::NotValidYetContext { .. },
        ) => "the server's certificate has expired or is not valid yet (or a clock is wrong)",
        rustls::Error::InvalidCertificate(_) => "the server's certificate was refused",
        rustls::Error::AlertReceived(Alert::CertificateRequired) => {
            "the server requires a client certificate: give one to `tls_client_cert`"
        }
        rustls::Error::AlertReceived(
            Alert::UnknownCA | Alert::BadCertificate | Alert::CertificateUnknown | Alert::AccessDenied,
        ) => {
            "the server refused this client's certificate: it must be signed by a CA the server trusts \
             (its `tls-ca-cert-file`)"
        }
        rustls::Error::AlertReceived(_) => "the server ended the TLS handshake",
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "the server did not answer in TLS: is the URL's port a plain-TCP port?"
        }
        _ => "the TLS connection failed",
    };
    Some(format!("{what} ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapped(inner: impl std::error::Error + Send + Sync + 'static) -> redis::RedisError {
        io::Error::new(io::ErrorKind::InvalidData, inner).into()
    }

    #[test]
    fn failures_name_their_cause() {
        let cases = [
            (rustls::Error::InvalidCertificate(CertError::BadSignature), "not signed by a CA"),
            (rustls::Error::InvalidCertificate(CertError::UnknownIssuer), "not signed by a CA"),
            (rustls::Error::InvalidCertificate(CertError::NotValidForName), "host name"),
            (rustls::Error::AlertReceived(Alert::CertificateRequired), "requires a client certificate"),
            (rustls::Error::AlertReceived(Alert::UnknownCA), "refused this client's certificate"),
            (rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType), "did not answer in TLS"),
        ];
        for (e, says) in cases {
            let reason = failure(&wrapped(e)).expect("a TLS failure");
            assert!(reason.contains(says), "{reason}");
        }
        assert!(failure(&wrapped(PlainTcp)).unwrap().contains("plain-TCP port"));
        let other = redis::RedisError::from(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(failure(&other), None);
        assert_eq!(failure(&io::Error::new(io::ErrorKind::TimedOut, NoTlsAnswer(Duration::ZERO)).into()), None);
    }

    #[test]
    fn a_silent_listener_is_not_taken_for_plain_redis() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let t = Instant::now();
        assert!(!answers_plain_resp("127.0.0.1", port, Duration::from_millis(100)));
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }

    #[test]
    fn a_listener_answering_resp_is_plain_redis() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut line = [0u8; 6];
            s.read_exact(&mut line).unwrap();
            s.write_all(b"-NOAUTH Authentication required.\r\n").unwrap();
        });
        assert!(answers_plain_resp("127.0.0.1", port, Duration::from_secs(5)));
        server.join().unwrap();
    }
}
