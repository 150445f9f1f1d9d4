//! The dialler token: where it comes from (the config, a file, a variable, systemd's
//! credentials), read when needed and never shown.

use std::fmt;
use std::path::PathBuf;

/// Where the bearer token comes from. Read when a client is built, not at load time, so
/// that a config can be checked for syntax on a machine without the secret.
#[derive(Clone)]
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

/// Why the token could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("dialler.token_file {path}: cannot read the token file")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("dialler.token_file {0}: the file is empty")]
    EmptyFile(PathBuf),
    #[error("dialler.token_env: the environment variable `{0}` is not set or empty")]
    Env(String),
    #[error(
        "dialler.token_credential `{0}`: $CREDENTIALS_DIRECTORY is not set, so this command runs \
         outside the dialsync service. Start the service (`systemctl start dialsync`; a manual \
         `dialsync sync` is then handed to it), or give this command the token another way \
         (`token_file` or `token_env` in a copy of the config)"
    )]
    NoCredentials(String),
    #[error("dialler.token_credential `{name}`: cannot read {path}")]
    Credential {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl TokenSource {
    pub fn resolve(&self) -> Result<Secret, TokenError> {
        match self {
            TokenSource::Inline(s) => Ok(s.clone()),
            TokenSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| TokenError::File {
                    path: path.clone(),
                    source,
                })?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(TokenError::EmptyFile(path.clone()));
                }
                Ok(Secret::new(token))
            }
            TokenSource::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
                    .ok_or_else(|| TokenError::NoCredentials(name.clone()))?;
                let path = PathBuf::from(dir).join(name);
                let text =
                    std::fs::read_to_string(&path).map_err(|source| TokenError::Credential {
                        name: name.clone(),
                        path: path.clone(),
                        source,
                    })?;
                let token = text.trim();
                if token.is_empty() {
                    return Err(TokenError::EmptyFile(path));
                }
                Ok(Secret::new(token))
            }
            TokenSource::Env(var) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
                _ => Err(TokenError::Env(var.clone())),
            },
        }
    }
}
