//! Certificates for a TLS server, made with the `openssl` command.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

const OPENSSL_NOT_FOUND: &str = "openssl not found on PATH (the harness makes TLS certificates with it): \
     install it with `apt-get update && apt-get install -y openssl` (Debian/Ubuntu) or `brew install openssl` (macOS)";

/// The extensions of each certificate: a CA that signs, a server certificate for
/// 127.0.0.1 and localhost, a client certificate. rustls (webpki) insists on the
/// subject alternative name and on the key usages matching the role.
const CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = redis-mutex-harness
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// The PEM files of a TLS server ([`ServerBuilder::tls`](crate::ServerBuilder::tls)),
/// in its directory: what a client needs to trust it (`ca_cert`) and to prove itself
/// to a server that asks (`client_cert`, `client_key`). Keys are P-256, PKCS#8.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA that signed both certificates (a client's root of trust).
    pub ca_cert: PathBuf,
    /// The server's certificate (`IP:127.0.0.1`, `DNS:localhost`).
    pub server_cert: PathBuf,
    /// The server's private key.
    pub server_key: PathBuf,
    /// A client certificate signed by the CA.
    pub client_cert: PathBuf,
    /// Its private key.
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// A CA, a server certificate (`127.0.0.1`, `localhost`) and a client certificate
    /// in `dir`, made by `openssl`, for servers that share them
    /// ([`ServerBuilder::tls_with`](crate::ServerBuilder::tls_with)). The error says
    /// what failed (or how to install `openssl`).
    pub fn generate(dir: &Path) -> Result<TlsFiles, String> {
        generate(dir)
    }
}

/// Makes a CA, a server and a client certificate in `dir`.
pub(crate) fn generate(dir: &Path) -> Result<TlsFiles, String> {
    let file = |name: &str| dir.join(name);
    let config = file("openssl.cnf");
    fs::write(&config, CONFIG).map_err(|e| format!("cannot write {}: {e}", config.display()))?;
    let files = TlsFiles {
        ca_cert: file("ca.crt"),
        server_cert: file("server.crt"),
        server_key: file("server.key"),
        client_cert: file("client.crt"),
        client_key: file("client.key"),
    };
    let p256 = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let ca_key = file("ca.key");
    openssl(
        Command::new("openssl")
            .args(["req", "-x509", "-new", "-days", "3650", "-subj", "/CN=redis-mutex-harness CA", "-extensions", "ca"])
            .args(p256)
            .arg("-config")
            .arg(&config)
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&files.ca_cert),
    )?;
    for (role, subject, cert, key, serial) in [
        ("server", "/CN=localhost", &files.server_cert, &files.server_key, "1"),
        ("client", "/CN=redis-mutex-harness client", &files.client_cert, &files.client_key, "2"),
    ] {
        let csr = file(&format!("{role}.csr"));
        openssl(
            Command::new("openssl")
                .args(["req", "-new", "-subj", subject])
                .args(p256)
                .arg("-config")
                .arg(&config)
                .arg("-keyout")
                .arg(key)
                .arg("-out")
                .arg(&csr),
        )?;
        openssl(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "3650", "-set_serial", serial, "-extensions", role])
                .arg("-extfile")
                .arg(&config)
                .arg("-in")
                .arg(&csr)
                .arg("-CA")
                .arg(&files.ca_cert)
                .arg("-CAkey")
                .arg(&ca_key)
                .arg("-out")
                .arg(cert),
        )?;
    }
    Ok(files)
}

fn openssl(cmd: &mut Command) -> Result<(), String> {
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(OPENSSL_NOT_FOUND.into()),
        Err(e) => return Err(format!("cannot run openssl: {e}")),
    };
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr)))
    }
}
