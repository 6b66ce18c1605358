//! Proves that an application's own rustls crypto provider stays the process default:
//! the crate installs ring only when none is installed, so a client built after the
//! application chose one uses that one, and works. Its own test binary: the process
//! default can be set once per process.

#![cfg(feature = "tls")]

mod support;

use std::sync::Arc;

use redis_mutex::LockClient;
use rustls::crypto::CryptoProvider;
use support::{RedisServer, connected_with};

#[test]
fn an_application_s_crypto_provider_stays_the_default() {
    let server = RedisServer::builder().tls().start();
    assert!(CryptoProvider::get_default().is_none(), "nothing installed one before this test");
    // The application's choice: ring with one cipher suite only.
    let mut mine = rustls::crypto::ring::default_provider();
    mine.cipher_suites.retain(|s| s.suite() == rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256);
    mine.install_default().expect("the first provider installed");
    let installed = Arc::as_ptr(CryptoProvider::get_default().unwrap());

    let ca = std::fs::read(&server.tls().unwrap().ca_cert).unwrap();
    let client = connected_with(&server, LockClient::builder().tls_root_cert(ca));
    client.mutex("job").lock().unwrap().unlock().unwrap();
    let now = CryptoProvider::get_default().unwrap();
    assert_eq!(Arc::as_ptr(now), installed, "the application's provider is still the default");
    assert_eq!(now.cipher_suites.len(), 1);
}
