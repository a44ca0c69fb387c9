//! TLS for the links cadre opens (model endpoints, MCP servers over HTTP): rustls on ring, the
//! system's trust roots (`SSL_CERT_FILE` and `SSL_CERT_DIR` honoured) plus an optional CA file
//! per endpoint, and what a failed handshake means in words.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{CertificateError, ClientConfig, RootCertStore};

/// Why a TLS configuration cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file cannot be read or holds nothing usable.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS: {0}")]
    Config(#[from] rustls::Error),
}

/// The crypto every cadre TLS link uses: ring. rustls marks it deprecated for lacking
/// post-quantum key exchange, which aws-lc-rs has; aws-lc-rs compiles a C library with cmake,
/// minutes on a 2-core machine, where ring takes seconds.
#[allow(deprecated)]
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Makes ring the process's default crypto: HTTP clients that build their own rustls
/// configuration (reqwest's, rmcp's) take it from there. Idempotent.
pub fn install_provider() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let _ = rustls::crypto::CryptoProvider::install_default(
            Arc::try_unwrap(provider()).expect("a new Arc"),
        );
    });
}

/// A client configuration trusting the system's roots and the CAs in `ca_file`, if given.
pub fn client_config(ca_file: Option<&Path>) -> Result<ClientConfig, TlsError> {
    install_provider();
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "a system trust root could not be read");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    if ignored > 0 {
        tracing::debug!(
            added,
            ignored,
            "system trust roots rustls cannot use were ignored"
        );
    }
    if let Some(ca_file) = ca_file {
        for cert in read_certs(ca_file)? {
            roots.add(cert).map_err(|e| TlsError::File {
                path: ca_file.to_path_buf(),
                reason: format!("not a usable CA certificate: {e}"),
            })?;
        }
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The certificates of a PEM file (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |reason: String| TlsError::File {
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(pem_reason(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(pem_reason(e)))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// The private key of a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        path: path.to_path_buf(),
        reason: pem_reason(e),
    })
}

fn pem_reason(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound => {
            "not found".into()
        }
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item of the expected kind".into(),
        other => format!("not PEM: {other}"),
    }
}

/// What a certificate check that failed somewhere in `error`'s chain means, in words: `unknown
/// issuer`, `name mismatch`, `expired`…; `None` if the chain holds no certificate error.
pub fn certificate_problem(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(rustls::Error::InvalidCertificate(c)) = e.downcast_ref::<rustls::Error>() {
            return Some(describe(c));
        }
        // I/O errors carry a TLS error inside, not as their source.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && let Some(problem) = certificate_problem(inner)
        {
            return Some(problem);
        }
        next = e.source();
    }
    None
}

fn describe(error: &CertificateError) -> String {
    match error {
        CertificateError::UnknownIssuer => "unknown issuer".into(),
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            "name mismatch".into()
        }
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired".into(),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "not valid yet".into()
        }
        CertificateError::Revoked => "revoked".into(),
        CertificateError::BadSignature => "bad signature".into(),
        other => format!("{other:?}"),
    }
}
