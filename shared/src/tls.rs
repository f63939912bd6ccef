//! TLS client configuration for the two network dependencies, PostgreSQL and Redis.
//!
//! Production databases and caches are managed services outside the cluster: what
//! crosses the network is what people wrote and passwords, so it goes over TLS. rustls
//! with the `ring` provider (never aws-lc, which needs a C toolchain in the image);
//! the server certificate is checked against a private CA bundle
//! (`DATABASE_CA_FILE` / `REDIS_CA_FILE`) or, without one, the system roots.
//!
//! PostgreSQL's `sslmode` decides how much is checked, as libpq decides it
//! ([`Verify`]): `verify-full` checks chain and host name, `verify-ca` the chain
//! only, `require`/`prefer` encrypt without checking (unless a CA file is given,
//! which — like libpq's `root.crt` — upgrades them to `verify-ca`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientConfig, WebPkiServerVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// A PEM CA bundle, read and parsed once at start (a bad file is a configuration
/// error naming its variable, not a failure on the first connection).
#[derive(Clone)]
pub struct CaBundle {
    pub path: PathBuf,
    certs: Arc<Vec<CertificateDer<'static>>>,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CaBundle({}, {} certificates)",
            self.path.display(),
            self.certs.len()
        )
    }
}

impl CaBundle {
    /// Reads every certificate of a PEM file; at least one must be there.
    pub fn load(path: &Path) -> Result<Self, String> {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{} is not a PEM file: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!("{} holds no PEM certificate", path.display()));
        }
        Ok(Self {
            path: path.to_owned(),
            certs: Arc::new(certs),
        })
    }

    /// The certificates, DER-encoded (what the redis crate takes as PEM again is
    /// handled by [`CaBundle::pem`]).
    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    /// The file's bytes, as the redis crate wants its root certificate.
    pub fn pem(&self) -> std::io::Result<Vec<u8>> {
        std::fs::read(&self.path)
    }
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Encrypt, check nothing (libpq `require`/`prefer` without a CA file).
    Nothing,
    /// The chain must lead to a trusted root; any host name.
    Chain,
    /// Chain and host name (the default everywhere but PostgreSQL's lax modes).
    Full,
}

/// The process's crypto provider: ring.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Trust anchors: the bundle if given, else the system's roots.
pub fn root_store(ca: Option<&CaBundle>) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    match ca {
        Some(ca) => {
            roots.add_parsable_certificates(ca.certs().iter().cloned());
        }
        None => {
            // Unreadable system certificates leave the store empty: every verified
            // connection then fails with "unknown issuer", which names the fix.
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    roots
}

/// A client configuration that checks what `verify` says.
pub fn client_config(ca: Option<&CaBundle>, verify: Verify) -> ClientConfig {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let verifier = Verifier::new(verify, ca, &provider);
    builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth()
}

/// The one certificate verifier; what it checks is data ([`Verify`]):
///
/// - `Full`: the WebPKI check, chain and host name;
/// - `Chain` (`verify-ca`): the same, except that a certificate naming another
///   host passes (the name check comes last, after the chain was proven);
/// - `Nothing` (libpq's `require`): any certificate.
///
/// The handshake signatures are checked in every mode (so the channel is bound
/// to whoever holds the key). With no trust anchor at all (an empty root store,
/// which WebPKI refuses to build on) a checking mode refuses every certificate
/// instead of passing it.
#[derive(Debug)]
struct Verifier {
    verify: Verify,
    /// The chain (and name) check; `None` for `Nothing`, or when there are no roots.
    webpki: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl Verifier {
    fn new(verify: Verify, ca: Option<&CaBundle>, provider: &Arc<CryptoProvider>) -> Self {
        let webpki = (verify != Verify::Nothing)
            .then(|| {
                WebPkiServerVerifier::builder_with_provider(
                    Arc::new(root_store(ca)),
                    provider.clone(),
                )
                .build()
                .ok()
            })
            .flatten();
        Self {
            verify,
            webpki,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let checked = match (self.verify, &self.webpki) {
            (Verify::Nothing, _) => return Ok(ServerCertVerified::assertion()),
            (_, None) => {
                return Err(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer,
                ));
            }
            (_, Some(webpki)) => webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ),
        };
        match checked {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.verify == Verify::Chain => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kai_testing::TestCa;

    /// Each mode of the one verifier checks what it says, on a certificate for
    /// `localhost` signed by a CA made for the test.
    #[test]
    fn each_mode_checks_what_it_says() {
        let ca = TestCa::new();
        let trusted = CaBundle::load(Path::new(&ca.ca_file())).unwrap();
        let stranger = TestCa::new();
        let untrusted = CaBundle::load(Path::new(&stranger.ca_file())).unwrap();
        let server = CertificateDer::from_pem_file(ca.dir.file("server.crt")).unwrap();
        let provider = provider();
        let check = |verifier: &Verifier, name: &str| {
            verifier
                .verify_server_cert(
                    &server,
                    &[],
                    &ServerName::try_from(name.to_owned()).unwrap(),
                    &[],
                    UnixTime::now(),
                )
                .map(drop)
        };
        let verifier = |verify, ca| Verifier::new(verify, ca, &provider);
        let wrong_name = |r: Result<(), rustls::Error>| {
            matches!(
                r,
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                        | CertificateError::NotValidForNameContext { .. }
                ))
            )
        };

        // Full: chain and name.
        let full = verifier(Verify::Full, Some(&trusted));
        assert_eq!(check(&full, "localhost"), Ok(()));
        assert!(wrong_name(check(&full, "db.example.com")));
        // Chain: the chain only, any name.
        let chain = verifier(Verify::Chain, Some(&trusted));
        assert_eq!(check(&chain, "localhost"), Ok(()));
        assert_eq!(check(&chain, "db.example.com"), Ok(()));
        // Another CA's roots: both checking modes refuse, whatever the name.
        for verify in [Verify::Full, Verify::Chain] {
            let r = check(&verifier(verify, Some(&untrusted)), "localhost");
            assert!(
                matches!(r, Err(rustls::Error::InvalidCertificate(_))) && !wrong_name(r.clone()),
                "{verify:?}: {r:?}"
            );
        }
        // Nothing: any certificate, any name.
        let nothing = verifier(Verify::Nothing, Some(&untrusted));
        assert!(nothing.webpki.is_none());
        assert_eq!(check(&nothing, "db.example.com"), Ok(()));
        // No trust anchor at all: a checking mode refuses every certificate.
        let anchorless = Verifier {
            verify: Verify::Chain,
            webpki: None,
            algorithms: provider.signature_verification_algorithms,
        };
        assert_eq!(
            check(&anchorless, "localhost"),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            ))
        );
    }
}
