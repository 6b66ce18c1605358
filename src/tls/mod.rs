//! TLS (`rediss://`): the certificates a builder is given, the `redis::Client` made
//! from them, the crypto provider, and what a failed TLS connection is told apart by.
//!
//! Everything that needs rustls is behind the `tls` feature; without it, TLS options
//! and `rediss://` URLs are refused with an error that says to enable the feature.

use std::fmt;
use std::time::Duration;

use crate::error::{Error, Result};

/// The TLS options of a builder: PEM as given, checked by [`TlsOptions::check`].
/// `Debug` shows whether each is set, never its bytes.
#[derive(Clone, Default)]
pub(crate) struct TlsOptions {
    /// CA certificates (PEM) to trust instead of the system's roots.
    pub root_cert: Option<Vec<u8>>,
    /// Certificate chain and private key (PEM) this client proves itself with.
    pub client_cert: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self { root_cert, client_cert } = self;
        f.debug_struct("TlsOptions")
            .field("root_cert", &root_cert.as_ref().map(|pem| format!("<{} bytes of PEM>", pem.len())))
            .field("client_cert", &client_cert.as_ref().map(|_| "<certificate and key redacted>"))
            .finish()
    }
}

/// Whether `url` asks for TLS (`rediss://`, or redis-rs's `valkeys://`).
fn is_tls_url(url: &str) -> bool {
    let scheme = url.trim_start().split("://").next().unwrap_or("");
    scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys")
}

impl TlsOptions {
    fn is_set(&self) -> bool {
        self.root_cert.is_some() || self.client_cert.is_some()
    }

    /// The option a complaint about these options names.
    fn first_set(&self) -> &'static str {
        if self.root_cert.is_some() { "tls_root_cert" } else { "tls_client_cert" }
    }

    /// The redis-rs client for `url`, with these certificates when it is a TLS URL.
    /// Options are checked already ([`check`](Self::check)); this checks that they
    /// go with the URL.
    pub fn client(&self, url: &str) -> Result<redis::Client> {
        if !is_tls_url(url) {
            if self.is_set() {
                return Err(Error::InvalidOption {
                    option: self.first_set(),
                    reason: "a TLS option is set but the URL is not `rediss://`: the connection would be plain \
                             TCP; use a `rediss://` URL"
                        .into(),
                });
            }
            return redis::Client::open(url).map_err(|e| Error::invalid_url(url, &e));
        }
        imp::client(self, url)
    }

    /// Checks the PEM before any I/O: [`Error::InvalidOption`] naming the option.
    pub fn check(&self) -> Result<()> {
        if self.is_set() && !cfg!(feature = "tls") {
            return Err(Error::InvalidOption { option: self.first_set(), reason: NO_TLS_FEATURE.into() });
        }
        #[cfg(feature = "tls")]
        imp::check(self)?;
        Ok(())
    }
}

const NO_TLS_FEATURE: &str = "this build of redis-mutex has no TLS support: enable its `tls` feature (a default \
     feature: `default-features = false` turns it off)";

/// Opens a connection of a TLS client within `timeout`. When the server accepted the
/// TCP connection but did not answer the handshake, the last quarter of `timeout`
/// (at most 250 ms) finds out whether a plain-TCP Redis listens there instead.
pub(crate) fn connect(client: &redis::Client, timeout: Duration) -> redis::RedisResult<redis::Connection> {
    imp::connect(client, timeout)
}

/// Why a TLS connection failed, when `err` says it did (a certificate refused by
/// either side, a server that does not speak TLS), with what to do; `None` otherwise.
pub(crate) fn failure(err: &redis::RedisError) -> Option<String> {
    #[cfg(feature = "tls")]
    return imp::failure(err);
    #[cfg(not(feature = "tls"))]
    {
        let _ = err;
        None
    }
}

#[cfg(not(feature = "tls"))]
mod imp {
    use super::*;

    pub fn client(_: &TlsOptions, url: &str) -> Result<redis::Client> {
        Err(Error::InvalidUrl { url: crate::keys::redact_url(url), reason: NO_TLS_FEATURE.into() })
    }

    pub fn connect(client: &redis::Client, timeout: Duration) -> redis::RedisResult<redis::Connection> {
        client.get_connection_with_timeout(timeout)
    }
}

#[cfg(feature = "tls")]
mod enabled;
#[cfg(feature = "tls")]
use enabled as imp;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_urls_are_told_by_their_scheme() {
        for url in ["rediss://h:6380/", "REDISS://h/", " rediss://h", "valkeys://h/"] {
            assert!(is_tls_url(url), "{url}");
        }
        for url in ["redis://h/", "redis+unix:///tmp/s", "h:6379", "redisss://h", ""] {
            assert!(!is_tls_url(url), "{url}");
        }
    }

    #[test]
    fn debug_shows_that_certificates_are_set_but_not_their_bytes() {
        let tls = TlsOptions {
            root_cert: Some(b"ROOT-PEM-BYTES".to_vec()),
            client_cert: Some((b"CERT-PEM-BYTES".to_vec(), b"KEY-PEM-BYTES".to_vec())),
        };
        let shown = format!("{tls:?}");
        assert!(shown.contains("14 bytes of PEM") && shown.contains("redacted"), "{shown}");
        for secret in ["ROOT", "CERT", "KEY-"] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }

    #[test]
    fn tls_options_with_a_plain_url_are_refused() {
        let tls = TlsOptions { root_cert: Some(b"x".to_vec()), client_cert: None };
        let err = tls.client("redis://127.0.0.1:1/").unwrap_err();
        assert!(matches!(err, Error::InvalidOption { option: "tls_root_cert", .. }), "{err:?}");
    }
}
