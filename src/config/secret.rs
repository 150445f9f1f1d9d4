//! The dialler token: where it comes from (the config, a file, a variable, systemd's
//! credentials), read when needed and never shown.

use std::fmt;
use std::path::PathBuf;

/// Where the bearer token comes from. Read when a client is built, not at load time, so
/// that a config can be checked for syntax on a machine without the secret.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSource {
    Inline(Secret),
    File(PathBuf),
    Env(String),
    /// A systemd credential (`LoadCredential=`), read from `$CREDENTIALS_DIRECTORY`.
    Credential(String),
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Inline(_) => f.write_str("Inline(<redacted>)"),
            TokenSource::File(p) => write!(f, "File({})", p.display()),
            TokenSource::Env(v) => write!(f, "Env({v})"),
            TokenSource::Credential(c) => write!(f, "Credential({c})"),
        }
    }
}

/// A secret string that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Why a secret (the token, an alert URL) could not be read. `key` is the config key
/// without its `_file`/`_env`/`_credential` ending (`dialler.token`).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("{key}_file {path}: cannot read the file")]
    File {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{key}_file {path}: the file is empty")]
    EmptyFile { key: &'static str, path: PathBuf },
    #[error("{key}_env: the environment variable `{var}` is not set or empty")]
    Env { key: &'static str, var: String },
    #[error(
        "{key}_credential `{name}`: $CREDENTIALS_DIRECTORY is not set, so this command runs \
         outside the dialsync service. Start the service (`systemctl start dialsync`; a manual \
         `dialsync sync` is then handed to it), or give this command the value another way \
         (`_file` or `_env` in a copy of the config)"
    )]
    NoCredentials { key: &'static str, name: String },
    #[error("{key}_credential `{name}`: cannot read {path}")]
    Credential {
        key: &'static str,
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl TokenSource {
    /// The dialler token.
    pub fn resolve(&self) -> Result<Secret, TokenError> {
        self.resolve_as("dialler.token")
    }

    /// The secret, with errors naming it as `key`.
    pub fn resolve_as(&self, key: &'static str) -> Result<Secret, TokenError> {
        let read = |path: &PathBuf| -> Result<Secret, TokenError> {
            let text = std::fs::read_to_string(path).map_err(|source| TokenError::File {
                key,
                path: path.clone(),
                source,
            })?;
            let value = text.trim();
            if value.is_empty() {
                return Err(TokenError::EmptyFile {
                    key,
                    path: path.clone(),
                });
            }
            Ok(Secret::new(value))
        };
        match self {
            TokenSource::Inline(s) => Ok(s.clone()),
            TokenSource::File(path) => read(path),
            TokenSource::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    TokenError::NoCredentials {
                        key,
                        name: name.clone(),
                    }
                })?;
                let path = PathBuf::from(dir).join(name);
                if let Err(source) = std::fs::metadata(&path) {
                    return Err(TokenError::Credential {
                        key,
                        name: name.clone(),
                        path,
                        source,
                    });
                }
                read(&path)
            }
            TokenSource::Env(var) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
                _ => Err(TokenError::Env {
                    key,
                    var: var.clone(),
                }),
            },
        }
    }
}
