//! `[job.source.auth]`: the secrets read when a download starts, and the OAuth2 client
//! credentials grant (RFC 6749 4.4) with its token kept, process-wide, until shortly
//! before it expires.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION};

use crate::config::{ClientAuth, HttpAuth, Secret};

use super::{display_url, without_url, Failure};

/// The credentials of one download, secrets read.
pub(super) enum Auth {
    None,
    /// A header sent as it is (`Authorization: Bearer`/`Basic`, or the CRM's own).
    Header(HeaderName, HeaderValue),
    OAuth2(OAuth2),
}

pub(super) struct OAuth2 {
    token_url: reqwest::Url,
    client_id: String,
    client_secret: Secret,
    scope: Option<String>,
    client_auth: ClientAuth,
}

/// A token is taken as expired this long before the server says it is.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

/// Tokens by token endpoint, client and scope.
type Cache = Mutex<HashMap<String, (Secret, Option<Instant>)>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Cache::default)
}

fn sensitive(text: &str, what: &str) -> Result<HeaderValue, Failure> {
    let mut v = HeaderValue::from_str(text).map_err(|_| {
        Failure::Fatal(format!(
            "the {what} holds a character an HTTP header cannot carry (a line break?)"
        ))
    })?;
    v.set_sensitive(true);
    Ok(v)
}

impl Auth {
    /// Reads the secrets of `auth`: a missing file or variable fails the download.
    pub(super) fn resolve(auth: Option<&HttpAuth>) -> Result<Auth, Failure> {
        let secret = |s: &crate::config::TokenSource, key: &'static str| {
            s.resolve_as(key)
                .map_err(|e| Failure::Fatal(super::chain(&e)))
        };
        Ok(match auth {
            None => Auth::None,
            Some(HttpAuth::Bearer(token)) => {
                let token = secret(token, "job.source.auth.token")?;
                Auth::Header(
                    AUTHORIZATION,
                    sensitive(&format!("Bearer {}", token.expose()), "token")?,
                )
            }
            Some(HttpAuth::Basic { username, password }) => {
                let password = secret(password, "job.source.auth.password")?;
                let pair = format!("{username}:{}", password.expose());
                Auth::Header(
                    AUTHORIZATION,
                    sensitive(&format!("Basic {}", base64(pair.as_bytes())), "password")?,
                )
            }
            Some(HttpAuth::Header { name, value }) => {
                let value = secret(value, "job.source.auth.value")?;
                let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    Failure::Fatal(format!("auth.name `{name}` is not an HTTP header name"))
                })?;
                Auth::Header(name, sensitive(value.expose(), "header's value")?)
            }
            Some(HttpAuth::OAuth2 {
                token_url,
                client_id,
                client_secret,
                scope,
                client_auth,
            }) => Auth::OAuth2(OAuth2 {
                token_url: token_url.clone(),
                client_id: client_id.clone(),
                client_secret: secret(client_secret, "job.source.auth.client_secret")?,
                scope: scope.clone(),
                client_auth: *client_auth,
            }),
        })
    }

    /// The header to send: for OAuth2 a cached token, or a new one (`fresh`: never the
    /// cached one, which the CRM has just refused).
    pub(super) async fn header(
        &self,
        client: &reqwest::Client,
        fresh: bool,
    ) -> Result<Option<(HeaderName, HeaderValue)>, Failure> {
        match self {
            Auth::None => Ok(None),
            Auth::Header(name, value) => Ok(Some((name.clone(), value.clone()))),
            Auth::OAuth2(o) => {
                let token = o.token(client, fresh).await?;
                Ok(Some((
                    AUTHORIZATION,
                    sensitive(&format!("Bearer {}", token.expose()), "access token")?,
                )))
            }
        }
    }

    pub(super) fn refreshes(&self) -> bool {
        matches!(self, Auth::OAuth2(_))
    }
}

/// The token endpoint's answer (RFC 6749 5.1 and 5.2).
#[derive(serde::Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    expires_in: Option<f64>,
    error: Option<String>,
    error_description: Option<String>,
}

impl OAuth2 {
    fn cache_key(&self) -> String {
        format!(
            "{} {} {}",
            self.token_url,
            self.client_id,
            self.scope.as_deref().unwrap_or("")
        )
    }

    async fn token(&self, client: &reqwest::Client, fresh: bool) -> Result<Secret, Failure> {
        let key = self.cache_key();
        if !fresh {
            let cached = cache().lock().expect("token cache").get(&key).cloned();
            if let Some((token, until)) = cached {
                if until.is_none_or(|t| Instant::now() < t) {
                    return Ok(token);
                }
            }
        }
        let (token, until) = self.request(client).await?;
        cache()
            .lock()
            .expect("token cache")
            .insert(key, (token.clone(), until));
        Ok(token)
    }

    async fn request(
        &self,
        client: &reqwest::Client,
    ) -> Result<(Secret, Option<Instant>), Failure> {
        let at = display_url(&self.token_url);
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(scope) = &self.scope {
            form.push(("scope", scope));
        }
        let mut request = client.post(self.token_url.clone());
        match self.client_auth {
            ClientAuth::Basic => {
                request = request.basic_auth(&self.client_id, Some(self.client_secret.expose()))
            }
            ClientAuth::Body => {
                form.push(("client_id", &self.client_id));
                form.push(("client_secret", self.client_secret.expose()));
            }
        }
        let answer = request.form(&form).send().await.map_err(|e| {
            Failure::Passing(format!(
                "the OAuth2 token endpoint {at}: {}",
                without_url(e)
            ))
        })?;
        let status = answer.status();
        let body = answer.bytes().await.map_err(|e| {
            Failure::Passing(format!(
                "the OAuth2 token endpoint {at}: {}",
                without_url(e)
            ))
        })?;
        let parsed: Option<TokenAnswer> = serde_json::from_slice(&body).ok();
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(Failure::Passing(format!(
                "the OAuth2 token endpoint {at} answered {status}"
            )));
        }
        let Some(TokenAnswer {
            access_token: Some(token),
            expires_in,
            ..
        }) = parsed.as_ref().filter(|_| status.is_success())
        else {
            let why = match parsed {
                Some(TokenAnswer {
                    error: Some(error),
                    error_description,
                    ..
                }) => format!(
                    ": {error}{}",
                    error_description
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default()
                ),
                _ if status.is_success() => ": no access_token in its answer".into(),
                _ => String::new(),
            };
            return Err(Failure::Fatal(format!(
                "the OAuth2 token endpoint {at} refused the client credentials of client_id `{}` ({status}{why}); check client_id, client_secret, scope and client_auth",
                self.client_id
            )));
        };
        let until = expires_in.filter(|s| s.is_finite() && *s > 0.0).map(|s| {
            let life = Duration::from_secs_f64(s.min(1e9));
            Instant::now() + life.saturating_sub(EXPIRY_MARGIN.min(life / 2))
        });
        Ok((Secret::new(token.clone()), until))
    }
}

/// Standard base64 with padding (RFC 4648 4), for HTTP Basic.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc_4648() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("crm:pä$$", "Y3JtOnDDpCQk"),
        ] {
            assert_eq!(super::base64(plain.as_bytes()), coded, "{plain}");
        }
    }
}
