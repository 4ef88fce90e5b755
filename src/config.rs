//! The environment, read once at start-up into a typed `Config`. Nothing reads
//! the environment after this; every error names the variable to fix.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use serde::Deserialize;

use crate::egress::{CaBundle, Proxies, ProxyUrl};
use crate::event::Environment;
use crate::retry::RetrySchedule;
use crate::seal::StoreKeys;
use crate::secret::{KeyRing, Secret};
use crate::source::{parse_networks, SourcePolicy};
use crate::tls::TlsFiles;
use crate::verify::Credentials;

pub const SANDBOX_URL: &str = "https://sbx.api.weaccelerate.com/webhooks/checkoutdotcom";
pub const PRODUCTION_URL: &str = "https://prd.api.weaccelerate.com/webhooks/checkoutdotcom";

/// Everything the relay runs with.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub database: DatabaseConfig,
    /// Keys of the environments that receive webhooks (at least one).
    pub credentials: BTreeMap<Environment, Credentials>,
    pub sandbox_url: Uri,
    pub production_url: Uri,
    pub event_types: Vec<String>,
    pub max_body_bytes: usize,
    pub delivery_timeout: Duration,
    pub delivery_concurrency: usize,
    /// Attempts per second per environment for the whole fleet; `None`: unlimited.
    pub delivery_rate: Option<u32>,
    /// Attempts of one environment in flight at once on this replica, so a
    /// slow environment never takes every sending slot.
    pub environment_concurrency: usize,
    pub breaker_failures: u32,
    pub breaker_probe_interval: Duration,
    pub retry_schedule: RetrySchedule,
    pub lease: Duration,
    /// Bearer tokens of the admin API and the console (several to rotate).
    pub admin_token: Option<KeyRing>,
    pub admin_listen: Option<SocketAddr>,
    /// Whether the console's session cookie is marked `Secure` (sent over
    /// HTTPS only); off only for plain-HTTP use on the operator's own machine.
    pub console_secure_cookie: bool,
    pub retention: Duration,
    pub shutdown_grace: Duration,
    pub log_format: LogFormat,
    /// `None` unless `RELAY_ALLOWED_SOURCES` is set.
    pub sources: Option<SourcePolicy>,
    /// CAs trusted for Accelerate beside the bundled roots.
    pub accelerate_ca: Option<CaBundle>,
    /// `HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY` (either case).
    pub proxies: Proxies,
    /// With `RELAY_TLS_CERT` and `RELAY_TLS_KEY`: the webhook port serves HTTPS only.
    pub tls: Option<TlsFiles>,
    /// The admin listener's pair: its own variables, else the webhook port's.
    pub admin_tls: Option<TlsFiles>,
}

#[derive(Clone, Debug)]
pub struct DatabaseConfig {
    pub url: Secret,
    pub pool_size: u32,
    pub statement_timeout: Duration,
    /// `RELAY_STORE_KEY`; `None`: bodies and headers are stored in clear.
    pub store_key: Option<Arc<StoreKeys>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// As `RELAY_LOG_FORMAT` spells it, so `check-config` shows a value to set.
impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}: {reason}")]
    Invalid { var: &'static str, reason: String },
    #[error(
        "{set} is set but {missing} is not: an environment needs both its Authorization key \
         and its signature key; set {missing} or unset {set}"
    )]
    HalfEnvironment {
        set: &'static str,
        missing: &'static str,
    },
    #[error(
        "no environment is configured: set CKO_SANDBOX_AUTHORIZATION_KEY and \
         CKO_SANDBOX_SIGNATURE_KEY (or the CKO_PRODUCTION_* pair) to the keys of your \
         Checkout.com webhook"
    )]
    NoEnvironment,
    #[error("could not read the environment: {0}")]
    Env(String),
    /// A certificate pair that does not load; the message names the variable.
    #[error("{0}")]
    Tls(String),
}

/// The variables as strings; envy maps `relay_listen` to `RELAY_LISTEN`.
#[derive(Deserialize, Default)]
struct Raw {
    relay_listen: Option<String>,
    relay_database_url: Option<String>,
    relay_database_pool_size: Option<String>,
    relay_database_statement_timeout_ms: Option<String>,
    cko_sandbox_authorization_key: Option<String>,
    cko_sandbox_signature_key: Option<String>,
    cko_production_authorization_key: Option<String>,
    cko_production_signature_key: Option<String>,
    accelerate_sandbox_url: Option<String>,
    accelerate_production_url: Option<String>,
    relay_event_types: Option<String>,
    relay_max_body_bytes: Option<String>,
    relay_delivery_timeout_ms: Option<String>,
    relay_delivery_concurrency: Option<String>,
    relay_delivery_rate: Option<String>,
    relay_environment_concurrency: Option<String>,
    relay_breaker_failures: Option<String>,
    relay_breaker_probe_interval: Option<String>,
    relay_retry_schedule: Option<String>,
    relay_lease_ms: Option<String>,
    relay_admin_token: Option<String>,
    relay_admin_listen: Option<String>,
    relay_console_secure_cookie: Option<String>,
    relay_retention_hours: Option<String>,
    relay_shutdown_grace_ms: Option<String>,
    relay_log_format: Option<String>,
    relay_allowed_sources: Option<String>,
    relay_trusted_proxies: Option<String>,
    relay_accelerate_ca_file: Option<String>,
    relay_tls_cert: Option<String>,
    relay_tls_key: Option<String>,
    relay_admin_tls_cert: Option<String>,
    relay_admin_tls_key: Option<String>,
    relay_store_key: Option<String>,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Builds from any set of variables (tests pass their own).
    pub fn from_vars<I>(vars: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        // envy would read an empty value as "set"; an empty key is never meant.
        let vars: Vec<_> = vars
            .into_iter()
            .filter(|(_, v)| !v.trim().is_empty())
            .collect();
        let proxies = proxies(&vars)?;
        let raw: Raw = envy::from_iter(vars).map_err(|e| ConfigError::Env(e.to_string()))?;
        let mut config = raw.into_config()?;
        config.proxies = proxies;
        Ok(config)
    }

    /// The environments that receive webhooks.
    pub fn environments(&self) -> impl Iterator<Item = Environment> + '_ {
        self.credentials.keys().copied()
    }

    pub fn credentials(&self, env: Environment) -> Option<&Credentials> {
        self.credentials.get(&env)
    }

    /// Where events of `env` go. Both URLs always exist, so events stored while an
    /// environment was on are still delivered after it is switched off.
    pub fn accelerate_url(&self, env: Environment) -> &Uri {
        match env {
            Environment::Sandbox => &self.sandbox_url,
            Environment::Production => &self.production_url,
        }
    }
}

impl DatabaseConfig {
    /// The URL as it may be shown (check-config, logs): any password masked,
    /// in the user-info part or as a query parameter (`password=`,
    /// `sslpassword=`…). A URL that does not parse is not shown at all.
    pub fn display_url(&self) -> String {
        let raw = self.url.expose();
        if raw.starts_with("sqlite:") {
            return raw.to_owned();
        }
        let Ok(mut url) = reqwest::Url::parse(raw) else {
            return "<not shown: does not parse as a URL>".to_owned();
        };
        if url.password().is_some() {
            let _ = url.set_password(Some("***"));
        }
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let secret = k.to_ascii_lowercase().contains("password");
                (
                    k.into_owned(),
                    if secret {
                        "***".to_owned()
                    } else {
                        v.into_owned()
                    },
                )
            })
            .collect();
        if !pairs.is_empty() {
            url.query_pairs_mut().clear().extend_pairs(pairs);
        }
        url.to_string()
    }

    /// Only the store's variables, for commands that work on the store alone.
    pub fn from_env() -> Result<Self, ConfigError> {
        raw_from_env()?.database()
    }
}

/// `RELAY_RETENTION_HOURS` alone, read as the relay reads it, for the CLI's
/// operator commands (what a replay can still reach).
pub fn retention_from_env() -> Result<Duration, ConfigError> {
    raw_from_env()?.retention()
}

/// `RELAY_DELIVERY_RATE` alone, for the CLI's `environments list`.
pub fn delivery_rate_from_env() -> Result<Option<u32>, ConfigError> {
    delivery_rate(raw_from_env()?.relay_delivery_rate)
}

fn raw_from_env() -> Result<Raw, ConfigError> {
    let vars = std::env::vars().filter(|(_, v)| !v.trim().is_empty());
    envy::from_iter(vars).map_err(|e| ConfigError::Env(e.to_string()))
}

/// A certificate and key pair: both or neither, and (read now, so a bad pair
/// stops start-up rather than the first handshake) one that loads.
fn tls_files(
    cert: Option<String>,
    cert_var: &'static str,
    key: Option<String>,
    key_var: &'static str,
) -> Result<Option<TlsFiles>, ConfigError> {
    let files = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => TlsFiles {
            cert: cert.into(),
            key: key.into(),
            cert_var,
            key_var,
        },
        (Some(_), None) => {
            return Err(invalid(
                key_var,
                format!("{cert_var} is set but {key_var} is not: set both (the certificate chain and its key) or neither"),
            ))
        }
        (None, Some(_)) => {
            return Err(invalid(
                cert_var,
                format!("{key_var} is set but {cert_var} is not: set both (the certificate chain and its key) or neither"),
            ))
        }
    };
    match files.load() {
        Ok(_) => Ok(Some(files)),
        Err(e) => Err(ConfigError::Tls(e)),
    }
}

/// The proxy variables, upper or lower case as curl reads them; both spellings
/// set to different values is refused rather than one silently winning.
fn proxies(vars: &[(String, String)]) -> Result<Proxies, ConfigError> {
    let one = |upper: &'static str| -> Result<Option<String>, ConfigError> {
        let lower = upper.to_ascii_lowercase();
        let mut found = vars
            .iter()
            .filter(|(k, _)| k == upper || *k == lower)
            .map(|(_, v)| v.trim().to_owned());
        let first = found.next();
        if found.any(|other| Some(&other) != first.as_ref()) {
            return Err(invalid(
                upper,
                format!("{upper} and {lower} are both set, to different values; unset one"),
            ));
        }
        Ok(first)
    };
    let url = |var: &'static str| -> Result<Option<ProxyUrl>, ConfigError> {
        one(var)?
            .map(|v| ProxyUrl::parse(&v).map_err(|e| invalid(var, e)))
            .transpose()
    };
    Ok(Proxies {
        https: url("HTTPS_PROXY")?,
        http: url("HTTP_PROXY")?,
        no_proxy: one("NO_PROXY")?,
    })
}

impl Raw {
    fn retention(&self) -> Result<Duration, ConfigError> {
        let hours = number::<u32>(
            self.relay_retention_hours.clone(),
            "RELAY_RETENTION_HOURS",
            168,
            limit::RETENTION_HOURS,
        )?;
        Ok(Duration::from_secs(3600) * hours)
    }

    fn database(&self) -> Result<DatabaseConfig, ConfigError> {
        Ok(DatabaseConfig {
            url: database_url(self.relay_database_url.clone())?,
            pool_size: number(
                self.relay_database_pool_size.clone(),
                "RELAY_DATABASE_POOL_SIZE",
                10,
                limit::POOL_SIZE,
            )?,
            statement_timeout: millis(
                self.relay_database_statement_timeout_ms.clone(),
                "RELAY_DATABASE_STATEMENT_TIMEOUT_MS",
                5_000,
                limit::TIMEOUT_MS,
            )?,
            store_key: self
                .relay_store_key
                .as_deref()
                .map(|v| StoreKeys::parse(v).map(Arc::new))
                .transpose()
                .map_err(|reason| invalid("RELAY_STORE_KEY", reason))?,
        })
    }

    fn into_config(self) -> Result<Config, ConfigError> {
        let database = self.database()?;
        let retention = self.retention()?;
        let mut credentials = BTreeMap::new();
        if let Some(c) = environment_keys(
            self.cko_sandbox_authorization_key,
            Environment::Sandbox.authorization_key_var(),
            self.cko_sandbox_signature_key,
            Environment::Sandbox.signature_key_var(),
        )? {
            credentials.insert(Environment::Sandbox, c);
        }
        if let Some(c) = environment_keys(
            self.cko_production_authorization_key,
            Environment::Production.authorization_key_var(),
            self.cko_production_signature_key,
            Environment::Production.signature_key_var(),
        )? {
            credentials.insert(Environment::Production, c);
        }
        if credentials.is_empty() {
            return Err(ConfigError::NoEnvironment);
        }

        let delivery_timeout = millis(
            self.relay_delivery_timeout_ms,
            "RELAY_DELIVERY_TIMEOUT_MS",
            10_000,
            limit::TIMEOUT_MS,
        )?;
        let delivery_concurrency = number(
            self.relay_delivery_concurrency,
            "RELAY_DELIVERY_CONCURRENCY",
            32,
            limit::CONCURRENCY,
        )?;
        // Each of two environments gets half the slots by default, so one
        // whose Accelerate is slow leaves the other room; alone, all of them.
        let environment_default = match credentials.len() {
            1 => delivery_concurrency,
            _ => delivery_concurrency.div_ceil(2),
        };
        let environment_concurrency = number(
            self.relay_environment_concurrency,
            "RELAY_ENVIRONMENT_CONCURRENCY",
            environment_default,
            delivery_concurrency,
        )?;
        let lease = match self.relay_lease_ms {
            Some(v) => millis(Some(v), "RELAY_LEASE_MS", 0, limit::LEASE_MS)?,
            // Long enough that an attempt in flight never loses its lease.
            None => delivery_timeout * 2 + Duration::from_secs(30),
        };
        // A claimed delivery may wait for one round of attempts before its own.
        if lease <= delivery_timeout * 2 {
            return Err(invalid(
                "RELAY_LEASE_MS",
                "must be longer than twice RELAY_DELIVERY_TIMEOUT_MS, or an attempt in flight could be claimed twice",
            ));
        }

        let trusted_proxies = match &self.relay_trusted_proxies {
            Some(v) => parse_networks(v).map_err(|e| invalid("RELAY_TRUSTED_PROXIES", e))?,
            None => Vec::new(),
        };
        let sources = match &self.relay_allowed_sources {
            Some(v) => Some(SourcePolicy::new(
                parse_networks(v).map_err(|e| invalid("RELAY_ALLOWED_SOURCES", e))?,
                trusted_proxies,
            )),
            None => None,
        };

        let accelerate_ca = match &self.relay_accelerate_ca_file {
            Some(path) => Some(
                CaBundle::read(std::path::Path::new(path))
                    .map_err(|e| invalid("RELAY_ACCELERATE_CA_FILE", e))?,
            ),
            None => None,
        };

        let tls = tls_files(
            self.relay_tls_cert,
            "RELAY_TLS_CERT",
            self.relay_tls_key,
            "RELAY_TLS_KEY",
        )?;
        let admin_listen = address(self.relay_admin_listen, "RELAY_ADMIN_LISTEN")?;
        let admin_tls =
            match tls_files(
                self.relay_admin_tls_cert,
                "RELAY_ADMIN_TLS_CERT",
                self.relay_admin_tls_key,
                "RELAY_ADMIN_TLS_KEY",
            )? {
                Some(_) if admin_listen.is_none() => return Err(invalid(
                    "RELAY_ADMIN_TLS_CERT",
                    "is set but RELAY_ADMIN_LISTEN is not: the admin API is on the webhook port, \
                     served with RELAY_TLS_CERT; set RELAY_ADMIN_LISTEN or unset the admin pair",
                )),
                Some(files) => Some(files),
                None => tls.clone().filter(|_| admin_listen.is_some()),
            };

        Ok(Config {
            tls,
            admin_tls,
            admin_listen,
            accelerate_ca,
            proxies: Proxies::default(),
            sources,
            listen: address(self.relay_listen, "RELAY_LISTEN")?
                .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8080))),
            database,
            credentials,
            sandbox_url: url(
                self.accelerate_sandbox_url,
                Environment::Sandbox.accelerate_url_var(),
                SANDBOX_URL,
            )?,
            production_url: url(
                self.accelerate_production_url,
                Environment::Production.accelerate_url_var(),
                PRODUCTION_URL,
            )?,
            event_types: event_types(self.relay_event_types)?,
            max_body_bytes: number(
                self.relay_max_body_bytes,
                "RELAY_MAX_BODY_BYTES",
                262_144,
                limit::BODY_BYTES,
            )?,
            delivery_timeout,
            delivery_concurrency,
            delivery_rate: delivery_rate(self.relay_delivery_rate)?,
            environment_concurrency,
            breaker_failures: number(
                self.relay_breaker_failures,
                "RELAY_BREAKER_FAILURES",
                10,
                limit::BREAKER_FAILURES,
            )?,
            breaker_probe_interval: probe_interval(self.relay_breaker_probe_interval)?,
            retry_schedule: match self.relay_retry_schedule {
                Some(v) => v.parse().map_err(|e| invalid("RELAY_RETRY_SCHEDULE", e))?,
                None => RetrySchedule::default(),
            },
            lease,
            admin_token: admin_tokens(self.relay_admin_token)?,
            console_secure_cookie: match self.relay_console_secure_cookie.as_deref().map(str::trim)
            {
                None | Some("true") => true,
                Some("false") => false,
                Some(other) => {
                    return Err(invalid(
                        "RELAY_CONSOLE_SECURE_COOKIE",
                        format!("`{other}` is not `true` or `false`"),
                    ))
                }
            },
            retention,
            shutdown_grace: millis(
                self.relay_shutdown_grace_ms,
                "RELAY_SHUTDOWN_GRACE_MS",
                30_000,
                limit::GRACE_MS,
            )?,
            log_format: match self.relay_log_format.as_deref().map(str::trim) {
                None | Some("json") => LogFormat::Json,
                Some("text") => LogFormat::Text,
                Some(other) => {
                    return Err(invalid(
                        "RELAY_LOG_FORMAT",
                        format!("`{other}` is not a log format; use `json` or `text`"),
                    ))
                }
            },
        })
    }
}

/// The shortest admin token accepted: 32 characters of `openssl rand -hex 32`
/// are 128 bits, beyond any guessing the throttle lets through.
pub const ADMIN_TOKEN_MIN_CHARS: usize = 32;

/// `RELAY_ADMIN_TOKEN`: one token or several (comma-separated, to rotate),
/// each trimmed like every key and each printable ASCII, no space, at least
/// `ADMIN_TOKEN_MIN_CHARS` long: what a `Bearer` header can carry, and too
/// long to guess.
fn admin_tokens(value: Option<String>) -> Result<Option<KeyRing>, ConfigError> {
    const VAR: &str = "RELAY_ADMIN_TOKEN";
    let Some(value) = value else {
        return Ok(None);
    };
    let ring = KeyRing::parse(&value).ok_or_else(|| {
        invalid(
            VAR,
            "holds no token; give one, or several separated by commas",
        )
    })?;
    let count = ring.iter().count();
    for (i, token) in ring.iter().enumerate() {
        let which = match count {
            1 => "the token".to_owned(),
            n => format!("token {} of {n}", i + 1),
        };
        let token = token.expose();
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                VAR,
                format!(
                    "{which} holds a character that is not printable ASCII (or a space); \
                     use letters, digits and punctuation only, e.g. from `openssl rand -hex 32`"
                ),
            ));
        }
        if token.len() < ADMIN_TOKEN_MIN_CHARS {
            return Err(invalid(
                VAR,
                format!(
                    "{which} is {} characters, shorter than the {ADMIN_TOKEN_MIN_CHARS} required; \
                     make one with `openssl rand -hex 32`",
                    token.len()
                ),
            ));
        }
    }
    Ok(Some(ring))
}

fn invalid(var: &'static str, reason: impl fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        var,
        reason: reason.to_string(),
    }
}

fn environment_keys(
    authorization: Option<String>,
    authorization_var: &'static str,
    signature: Option<String>,
    signature_var: &'static str,
) -> Result<Option<Credentials>, ConfigError> {
    let ring = |value: String, var: &'static str| {
        KeyRing::parse(&value).ok_or_else(|| {
            invalid(
                var,
                "holds no key; give one key, or several separated by commas",
            )
        })
    };
    match (authorization, signature) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(ConfigError::HalfEnvironment {
            set: authorization_var,
            missing: signature_var,
        }),
        (None, Some(_)) => Err(ConfigError::HalfEnvironment {
            set: signature_var,
            missing: authorization_var,
        }),
        (Some(a), Some(s)) => Ok(Some(Credentials {
            authorization: ring(a, authorization_var)?,
            signature: ring(s, signature_var)?,
        })),
    }
}

/// Each number variable's largest accepted value. Beyond these a value is a
/// typo that would overflow or exhaust something at run time (a worker with
/// 2^60 slots panicked at start), so start-up refuses it instead.
mod limit {
    use std::time::Duration;

    pub const BODY_BYTES: usize = 64 * 1024 * 1024;
    pub const POOL_SIZE: u32 = 1_000;
    pub const TIMEOUT_MS: u64 = 600_000;
    pub const CONCURRENCY: usize = 1_024;
    pub const LEASE_MS: u64 = 86_400_000;
    pub const RETENTION_HOURS: u32 = 87_600;
    pub const GRACE_MS: u64 = 3_600_000;
    pub const RATE: u32 = 100_000;
    pub const BREAKER_FAILURES: u32 = 10_000;
    pub const PROBE_MIN: Duration = Duration::from_millis(100);
    pub const PROBE_MAX: Duration = Duration::from_secs(3600);
}

/// The default `RELAY_DELIVERY_RATE` (README, "Delivery control").
pub const DEFAULT_DELIVERY_RATE: u32 = 100;

/// `RELAY_DELIVERY_RATE`: a whole number, or `unlimited`.
fn delivery_rate(value: Option<String>) -> Result<Option<u32>, ConfigError> {
    match value.as_deref().map(str::trim) {
        None => Ok(Some(DEFAULT_DELIVERY_RATE)),
        Some("unlimited") => Ok(None),
        Some(_) => number(
            value.clone(),
            "RELAY_DELIVERY_RATE",
            DEFAULT_DELIVERY_RATE,
            limit::RATE,
        )
        .map(Some)
        .map_err(|_| {
            invalid(
                "RELAY_DELIVERY_RATE",
                format!(
                    "`{}` is not attempts per second (a whole number from 1 to {}) or `unlimited`",
                    value.as_deref().unwrap_or_default(),
                    limit::RATE
                ),
            )
        }),
    }
}

/// `RELAY_BREAKER_PROBE_INTERVAL`: a duration such as `30s`.
fn probe_interval(value: Option<String>) -> Result<Duration, ConfigError> {
    let Some(value) = value else {
        return Ok(Duration::from_secs(30));
    };
    match humantime::parse_duration(value.trim()) {
        Ok(d) if (limit::PROBE_MIN..=limit::PROBE_MAX).contains(&d) => Ok(d),
        _ => Err(invalid(
            "RELAY_BREAKER_PROBE_INTERVAL",
            format!("`{value}` is not a duration from 100ms to 1h (e.g. `30s`)"),
        )),
    }
}

fn number<T>(value: Option<String>, var: &'static str, default: T, max: T) -> Result<T, ConfigError>
where
    T: std::str::FromStr + PartialOrd + From<u8> + fmt::Display,
{
    let Some(value) = value else {
        return Ok(default);
    };
    match value.trim().parse::<T>() {
        Ok(n) if n > T::from(0) && n <= max => Ok(n),
        _ => Err(invalid(
            var,
            format!("`{value}` is not a whole number from 1 to {max}"),
        )),
    }
}

fn millis(
    value: Option<String>,
    var: &'static str,
    default: u64,
    max: u64,
) -> Result<Duration, ConfigError> {
    number(value, var, default, max).map(Duration::from_millis)
}

fn address(value: Option<String>, var: &'static str) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(value) = value else {
        return Ok(None);
    };
    value
        .trim()
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .map(Some)
        .ok_or_else(|| {
            invalid(
                var,
                format!(
                    "`{value}` is not an address to listen on; write HOST:PORT, e.g. 0.0.0.0:8080"
                ),
            )
        })
}

/// Accelerate's URL, checked as a URL (http or https, with a host) and kept
/// as the request URI the delivery worker sends to, which is stricter about
/// some characters: either refusal happens here, at start.
fn url(value: Option<String>, var: &'static str, default: &str) -> Result<Uri, ConfigError> {
    let value = value.unwrap_or_else(|| default.to_owned());
    reqwest::Url::parse(value.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .and_then(|u| u.as_str().parse::<Uri>().ok())
        .ok_or_else(|| {
            invalid(
                var,
                format!("`{value}` is not an http(s) URL; give Accelerate's full webhook URL"),
            )
        })
}

fn database_url(value: Option<String>) -> Result<Secret, ConfigError> {
    let value = value.unwrap_or_else(|| "sqlite://relay.db".to_owned());
    let value = value.trim();
    if value.starts_with("sqlite:")
        || value.starts_with("postgres://")
        || value.starts_with("postgresql://")
    {
        Ok(Secret::new(value))
    } else {
        // The URL may hold a password: name the scheme only.
        let scheme = value.split(':').next().unwrap_or_default();
        Err(invalid(
            "RELAY_DATABASE_URL",
            format!(
                "scheme `{scheme}` is not supported; use sqlite://FILE or postgres://USER@HOST/DB"
            ),
        ))
    }
}

/// Like the retry schedule, an empty entry (`","`, `a,,b`) is refused rather
/// than skipped: it is a typo, and a silently shorter list changes behaviour.
fn event_types(value: Option<String>) -> Result<Vec<String>, ConfigError> {
    let value = value.unwrap_or_else(|| "payment_approved,payment_declined".to_owned());
    let types: Vec<String> = value.split(',').map(|t| t.trim().to_owned()).collect();
    if types.iter().any(String::is_empty) {
        return Err(invalid(
            "RELAY_EVENT_TYPES",
            "has an empty entry; name event types separated by single commas, e.g. payment_approved,payment_declined",
        ));
    }
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_follow_the_contract() {
        let c = Config::from_vars(vars(&[
            ("CKO_SANDBOX_AUTHORIZATION_KEY", "a"),
            ("CKO_SANDBOX_SIGNATURE_KEY", "s"),
        ]))
        .expect("valid");
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.database.url.expose(), "sqlite://relay.db");
        assert_eq!(c.event_types, ["payment_approved", "payment_declined"]);
        assert_eq!(c.max_body_bytes, 262_144);
        assert_eq!(c.delivery_timeout, Duration::from_secs(10));
        assert_eq!(c.retention, Duration::from_secs(168 * 3600));
        assert_eq!(c.sandbox_url.to_string(), SANDBOX_URL);
        assert_eq!(c.production_url.to_string(), PRODUCTION_URL);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.environments().collect::<Vec<_>>(), [Environment::Sandbox]);
    }

    #[test]
    fn accelerate_urls_are_ones_a_request_can_be_sent_to() {
        let with = |url: &str| {
            Config::from_vars(vars(&[
                ("CKO_SANDBOX_AUTHORIZATION_KEY", "a"),
                ("CKO_SANDBOX_SIGNATURE_KEY", "s"),
                ("ACCELERATE_SANDBOX_URL", url),
            ]))
        };
        let ok = with("http://127.0.0.1:9000/hooks?x=1").expect("valid");
        assert_eq!(
            ok.sandbox_url.to_string(),
            "http://127.0.0.1:9000/hooks?x=1"
        );
        // What the delivery worker sends to: the same resource as a request URI.
        assert_eq!(
            ok.sandbox_url.path_and_query().map(|p| p.as_str()),
            Some("/hooks?x=1")
        );
        for bad in ["ftp://h/x", "not a url", "https://"] {
            let error = with(bad).expect_err(bad).to_string();
            assert!(error.contains("ACCELERATE_SANDBOX_URL"), "{bad}: {error}");
        }
    }

    #[test]
    fn console_secure_cookie_is_true_false_or_refused_by_name() {
        let with = |value: Option<&str>| {
            let mut pairs = vec![
                ("CKO_SANDBOX_AUTHORIZATION_KEY", "a"),
                ("CKO_SANDBOX_SIGNATURE_KEY", "s"),
            ];
            pairs.extend(value.map(|v| ("RELAY_CONSOLE_SECURE_COOKIE", v)));
            Config::from_vars(vars(&pairs))
        };
        // Empty is unset, as for every variable.
        for (value, secure) in [
            (None, true),
            (Some(""), true),
            (Some("true"), true),
            (Some(" false "), false),
        ] {
            assert_eq!(
                with(value).expect("valid").console_secure_cookie,
                secure,
                "{value:?}"
            );
        }
        for value in ["no", "0", "FALSE"] {
            let error = with(Some(value)).expect_err(value).to_string();
            assert!(
                error.contains("RELAY_CONSOLE_SECURE_COOKIE"),
                "{value}: {error}"
            );
        }
    }

    #[test]
    fn database_passwords_are_masked_wherever_they_are() {
        for (url, shown) in [
            ("postgres://u:hunter2@h/db", "postgres://u:***@h/db"),
            (
                "postgres://u@h/db?password=hunter2&sslmode=require",
                "postgres://u@h/db?password=***&sslmode=require",
            ),
            (
                "postgresql://u@h:5433/db?sslpassword=hunter2&PassWord=hunter2",
                "postgresql://u@h:5433/db?sslpassword=***&PassWord=***",
            ),
            ("sqlite:///data/relay.db", "sqlite:///data/relay.db"),
        ] {
            let c = DatabaseConfig {
                url: Secret::new(url),
                pool_size: 1,
                statement_timeout: Duration::from_secs(1),
                store_key: None,
            };
            assert_eq!(c.display_url(), shown);
        }
    }

    #[test]
    fn errors_name_the_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[], "CKO_SANDBOX_AUTHORIZATION_KEY"),
            (
                &[("CKO_PRODUCTION_SIGNATURE_KEY", "s")],
                "CKO_PRODUCTION_AUTHORIZATION_KEY",
            ),
            (
                &[
                    ("CKO_SANDBOX_AUTHORIZATION_KEY", "a"),
                    ("CKO_SANDBOX_SIGNATURE_KEY", "s"),
                    ("RELAY_MAX_BODY_BYTES", "big"),
                ],
                "RELAY_MAX_BODY_BYTES",
            ),
            (
                &[
                    ("CKO_SANDBOX_AUTHORIZATION_KEY", "a"),
                    ("CKO_SANDBOX_SIGNATURE_KEY", "s"),
                    ("RELAY_LOG_FORMAT", "xml"),
                ],
                "RELAY_LOG_FORMAT",
            ),
            (
                &[
                    ("CKO_SANDBOX_AUTHORIZATION_KEY", "a"),
                    ("CKO_SANDBOX_SIGNATURE_KEY", "s"),
                    ("ACCELERATE_SANDBOX_URL", "ftp://x"),
                ],
                "ACCELERATE_SANDBOX_URL",
            ),
            (
                &[
                    ("CKO_SANDBOX_AUTHORIZATION_KEY", "a"),
                    ("CKO_SANDBOX_SIGNATURE_KEY", "s"),
                    ("RELAY_RETRY_SCHEDULE", "5s,later"),
                ],
                "RELAY_RETRY_SCHEDULE",
            ),
            (
                &[
                    ("CKO_SANDBOX_AUTHORIZATION_KEY", "a"),
                    ("CKO_SANDBOX_SIGNATURE_KEY", "s"),
                    ("RELAY_DATABASE_URL", "mysql://u:hunter2@h/db"),
                ],
                "RELAY_DATABASE_URL",
            ),
            (
                &[
                    ("CKO_SANDBOX_AUTHORIZATION_KEY", "a"),
                    ("CKO_SANDBOX_SIGNATURE_KEY", "s"),
                    ("RELAY_DELIVERY_CONCURRENCY", "1152921504606846976"),
                ],
                "RELAY_DELIVERY_CONCURRENCY",
            ),
            (
                &[
                    ("CKO_SANDBOX_AUTHORIZATION_KEY", "a"),
                    ("CKO_SANDBOX_SIGNATURE_KEY", "s"),
                    ("RELAY_DELIVERY_TIMEOUT_MS", "18446744073709551615"),
                ],
                "RELAY_DELIVERY_TIMEOUT_MS",
            ),
            (
                &[
                    ("CKO_SANDBOX_AUTHORIZATION_KEY", "a"),
                    ("CKO_SANDBOX_SIGNATURE_KEY", "s"),
                    ("RELAY_RETRY_SCHEDULE", ","),
                ],
                "RELAY_RETRY_SCHEDULE",
            ),
            (
                &[
                    ("CKO_SANDBOX_AUTHORIZATION_KEY", "a"),
                    ("CKO_SANDBOX_SIGNATURE_KEY", "s"),
                    ("RELAY_EVENT_TYPES", "payment_approved,,payment_declined"),
                ],
                "RELAY_EVENT_TYPES",
            ),
        ];
        for (pairs, var) in cases {
            let err = Config::from_vars(vars(pairs))
                .expect_err("invalid")
                .to_string();
            assert!(err.contains(var), "{err} should name {var}");
            assert!(!err.contains("hunter2"), "{err} leaks a password");
        }
    }
}
