//! The system's trusted certificate authorities, read once per process.
//!
//! reqwest reads the system's store each time a client is built: the bundle, and with
//! `SSL_CERT_DIR` set every file of that folder too (4 ms on the benchmark's VM, where
//! both are set and each certificate is read twice). A manual sync builds a client for
//! the token check and one per job, a webhook one more, and the daemon one per job run.
//! They all get these, read at the first need: 0.13 ms a build.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use rustls::pki_types::CertificateDer;

/// How many times the system's store was read (tests: once per process).
static READS: AtomicUsize = AtomicUsize::new(0);

/// `builder` trusting the system's certificate authorities (and whatever is added to it
/// after, such as a job's `ca_file`), instead of reading them again.
pub(crate) fn with_system_roots(builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
    static ROOTS: OnceLock<Vec<reqwest::Certificate>> = OnceLock::new();
    let roots = ROOTS.get_or_init(|| {
        READS.fetch_add(1, Ordering::Relaxed);
        let loaded = rustls_native_certs::load_native_certs();
        for e in &loaded.errors {
            tracing::debug!(error = %e, "a file of the system's certificate store was not read");
        }
        usable(loaded.certs)
    });
    roots
        .iter()
        .cloned()
        .fold(builder.tls_built_in_root_certs(false), |b, c| {
            b.add_root_certificate(c)
        })
}

/// The certificates of the store that rustls takes, each once. Like reqwest's own loading,
/// a certificate rustls cannot use (system stores hold some ancient ones) is left out
/// rather than failing every client.
fn usable(mut ders: Vec<CertificateDer<'static>>) -> Vec<reqwest::Certificate> {
    ders.sort_unstable_by(|a, b| a.as_ref().cmp(b.as_ref()));
    ders.dedup_by(|a, b| a.as_ref() == b.as_ref());
    let mut check = rustls::RootCertStore::empty();
    let total = ders.len();
    let roots: Vec<reqwest::Certificate> = ders
        .into_iter()
        .filter(|der| check.add(der.clone()).is_ok())
        .filter_map(|der| reqwest::Certificate::from_der(der.as_ref()).ok())
        .collect();
    if roots.len() < total {
        tracing::debug!(
            left_out = total - roots.len(),
            "certificates of the system's store that rustls cannot use were left out"
        );
    }
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_store_is_read_once_for_every_client() {
        for _ in 0..3 {
            with_system_roots(reqwest::Client::builder())
                .build()
                .expect("a client with the system's roots");
        }
        assert_eq!(READS.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn duplicates_and_unusable_certificates_are_left_out() {
        use rustls::pki_types::pem::PemObject;
        let der = CertificateDer::from_pem_file("tests/data/untrusted-cert.pem").unwrap();
        let loaded = vec![
            der.clone(),
            CertificateDer::from(b"not a certificate".to_vec()),
            der,
        ];
        assert_eq!(usable(loaded).len(), 1);
    }
}
