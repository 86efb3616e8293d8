//! TLS material: extra trust anchors read from PEM (`endpoints.tls_roots_file`), client configs
//! that add them to the bundled webpki roots, and a server identity (a self-signed certificate
//! from rcgen) so the simulated exchange can serve https and wss.
//!
//! ring is named as the provider everywhere: with a second provider (aws-lc-rs) compiled in,
//! rustls's implicit choice panics at run time.

use std::sync::Arc;

use futures_rustls::pki_types::pem::PemObject;
use futures_rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use futures_rustls::rustls::crypto::CryptoProvider;
use futures_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::client::{default_tls_config, tls_config_with_roots};
use super::error::NetError;

/// The crypto provider of every TLS config the project builds.
pub fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(futures_rustls::rustls::crypto::ring::default_provider())
}

/// Reads the `CERTIFICATE` blocks of a PEM text as trust anchors. Other blocks (keys, say)
/// are skipped; no certificate at all, a malformed block, or a certificate that cannot serve
/// as a trust anchor is an error that says which.
pub fn parse_pem_roots(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut certs = Vec::new();
    for (i, cert) in CertificateDer::pem_slice_iter(pem).enumerate() {
        let cert = cert.map_err(|e| format!("certificate {}: bad PEM: {e}", i + 1))?;
        // Checked here so a bad file fails at start-up, not at the first handshake (ureq
        // would skip it silently).
        RootCertStore::empty()
            .add(cert.clone())
            .map_err(|e| format!("certificate {}: not usable as a trust anchor: {e}", i + 1))?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err("no PEM CERTIFICATE block".into());
    }
    Ok(certs)
}

/// The client config for the venue's endpoints: the bundled webpki roots plus `extra`.
pub fn tls_config_with_extra_roots(
    extra: &[CertificateDer<'static>],
) -> Result<Arc<ClientConfig>, NetError> {
    if extra.is_empty() {
        return default_tls_config();
    }
    let mut roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in extra {
        roots.add(cert.clone()).map_err(|e| NetError::Tls(format!("extra root: {e}")))?;
    }
    tls_config_with_roots(roots)
}

/// A server certificate and its private key.
#[derive(Clone)]
pub struct TlsIdentity {
    cert: CertificateDer<'static>,
    /// PKCS#8 DER. Kept as bytes because `PrivateKeyDer` is deliberately not `Clone`.
    key: Arc<[u8]>,
}

impl TlsIdentity {
    /// A fresh self-signed certificate for `localhost` and `127.0.0.1` (a test or demo venue
    /// on this machine); clients must be told to trust [`TlsIdentity::cert_pem`].
    pub fn self_signed_localhost() -> Result<Self, NetError> {
        Self::self_signed(&["localhost", "127.0.0.1"])
    }

    /// A fresh self-signed certificate for these names (IP literals become IP SANs).
    pub fn self_signed(names: &[&str]) -> Result<Self, NetError> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let ck = rcgen::generate_simple_self_signed(names)
            .map_err(|e| NetError::Tls(format!("cannot make a certificate: {e}")))?;
        Ok(Self { cert: ck.cert.der().clone(), key: ck.signing_key.serialize_der().into() })
    }

    /// An identity from DER: the certificate and its PKCS#8 private key.
    pub fn from_der(cert: CertificateDer<'static>, pkcs8_key: Vec<u8>) -> Self {
        Self { cert, key: pkcs8_key.into() }
    }

    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The certificate as PEM, e.g. for a client's `tls_roots_file`.
    pub fn cert_pem(&self) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.cert.as_ref());
        let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
        // RFC 7468: lines of 64 characters.
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
        out
    }

    /// A rustls server config presenting this certificate (TLS 1.2 and 1.3, ring).
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, NetError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.to_vec()));
        let config = ServerConfig::builder_with_provider(ring_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| NetError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], key)
            .map_err(|e| NetError::Tls(format!("server certificate: {e}")))?;
        Ok(Arc::new(config))
    }
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key, not even in a debug log.
        f.debug_struct("TlsIdentity").field("cert_bytes", &self.cert.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_pem_reads_back_as_the_same_root() {
        let id = TlsIdentity::self_signed_localhost().unwrap_or_else(|e| panic!("{e}"));
        let pem = id.cert_pem();
        assert!(pem.lines().all(|l| l.len() <= 64), "{pem}");
        let roots = parse_pem_roots(pem.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(roots, vec![id.cert_der().clone()]);
        assert!(id.server_config().is_ok());
        assert!(tls_config_with_extra_roots(&roots).is_ok());
        // Two certificates in one file, with other text around them, are both read.
        let two = format!(
            "comment\n{pem}\n{}",
            TlsIdentity::self_signed(&["x"]).map(|i| i.cert_pem()).unwrap_or_default()
        );
        assert_eq!(parse_pem_roots(two.as_bytes()).map(|r| r.len()), Ok(2));
    }

    #[test]
    fn bad_pem_is_a_clear_error() {
        let err = |text: &str| parse_pem_roots(text.as_bytes()).err().unwrap_or_default();
        assert!(err("").contains("no PEM CERTIFICATE"));
        assert!(err("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            .contains("no PEM CERTIFICATE"));
        assert!(err("-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n")
            .contains("bad PEM"));
        // Valid base64, but not a certificate.
        assert!(err("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .contains("trust anchor"));
    }
}
