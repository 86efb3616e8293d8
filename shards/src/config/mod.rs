//! `config.toml`: parsed with unknown keys rejected, then validated once into [`ValidConfig`],
//! which the rest of the runtime takes as proof that every limit is in range.
//!
//! `sections` holds one struct per TOML table with its defaults; `validate` the range checks.

use futures_rustls::pki_types::CertificateDer;
use serde::Deserialize;
use std::path::Path;

mod env;
mod sections;
mod validate;

pub use env::env_overrides;

pub use sections::{
    Api, AutoWord, Connections, DataCores, Discovery, Endpoints, Integrity, Layout, Lifecycle, Log,
    Nats, Publish, Secret, Selection, HTTP_CONNECTIONS_RESERVED_MIN,
};

/// Everything that can be wrong with a configuration. Each message is one line that says
/// everything (so no variant also exposes a `source()`: a printer walking the chain would
/// print the cause twice).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {why}")]
    Read { path: String, why: String },
    #[error("invalid TOML in {path}{at}: {message}")]
    Parse { path: String, at: String, message: String },
    #[error("{key} = {value}: {why}")]
    Invalid { key: &'static str, value: String, why: String },
    #[error("environment {var}={value}: {why}")]
    Env { var: &'static str, value: String, why: String },
}

/// Where a configuration came from, for the start-up log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// This file, named by `--config`, `POLYBOOK_CONFIG` or found as `./config.toml`.
    File(std::path::PathBuf),
    /// No file was named and `./config.toml` does not exist: every key has its default.
    Defaults,
}

/// A loaded (not yet validated) configuration, where it came from, and the environment
/// variables that overrode it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub source: ConfigSource,
    pub env_applied: Vec<&'static str>,
}

/// The file read when none is named.
pub const DEFAULT_CONFIG_FILE: &str = "config.toml";

#[derive(Debug, Clone, Deserialize, Default, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub endpoints: Endpoints,
    pub layout: Layout,
    pub connections: Connections,
    pub integrity: Integrity,
    pub discovery: Discovery,
    pub lifecycle: Lifecycle,
    pub selection: Selection,
    pub api: Api,
    pub log: Log,
    pub publish: Publish,
}

/// A configuration whose every limit was checked; only [`Config::validate`] makes one.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    config: Config,
    /// The certificates of `endpoints.tls_roots_file`, read and checked once.
    tls_roots: Vec<CertificateDer<'static>>,
}

impl std::ops::Deref for ValidConfig {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.config
    }
}

impl ValidConfig {
    /// Extra trusted roots from `endpoints.tls_roots_file` (empty without one).
    pub fn tls_roots(&self) -> &[CertificateDer<'static>] {
        &self.tls_roots
    }
}

/// A TOML error as one line: where (line and column of its span) and what.
fn parse_error(path: &str, text: &str, e: &toml::de::Error) -> ConfigError {
    let at = e.span().map_or_else(String::new, |span| {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!(" at line {line}, column {column}")
    });
    let message = e.message().trim().replace('\n', " ");
    ConfigError::Parse { path: path.to_owned(), at, message }
}

impl Config {
    pub fn from_toml(text: &str, path: &str) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| parse_error(path, text, &e))
    }

    /// [`Config::from_toml`] with the environment's overrides applied on top of the file
    /// (see [`env_overrides`]); also returns the variables that were applied.
    pub fn from_toml_with_env(
        text: &str,
        path: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(Config, Vec<&'static str>), ConfigError> {
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| parse_error(path, text, &e))?;
        let applied = env::apply(&mut doc, env)?;
        // Spans of the merged document do not point into the file: say what, not where.
        let cfg = Config::deserialize(toml::Value::Table(doc)).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            at: String::new(),
            message: e.to_string(),
        })?;
        Ok((cfg, applied))
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: p.clone(), why: e.to_string() })?;
        Config::from_toml(&text, &p)
    }

    /// The configuration `run` uses: the file named (`--config` or `POLYBOOK_CONFIG`, which
    /// must exist), else `./config.toml` if it exists, else the defaults; then the
    /// environment's overrides.
    pub fn load_with_env(
        named: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Loaded, ConfigError> {
        let default = Path::new(DEFAULT_CONFIG_FILE);
        let path = match named {
            Some(p) => Some(p),
            None if default.exists() => Some(default),
            None => None,
        };
        let (text, source) = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError::Read {
                    path: p.display().to_string(),
                    why: e.to_string(),
                })?;
                (text, ConfigSource::File(p.to_path_buf()))
            }
            None => (String::new(), ConfigSource::Defaults),
        };
        let shown = path.map_or_else(|| "(defaults)".to_owned(), |p| p.display().to_string());
        let (config, env_applied) = Config::from_toml_with_env(&text, &shown, env)?;
        Ok(Loaded { config, source, env_applied })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_config_toml_parses_and_equals_defaults() {
        let text = include_str!("../../../config.toml");
        let parsed = Config::from_toml(text, "config.toml").map_err(|e| e.to_string());
        let parsed = parsed.and_then(|c| c.validate().map_err(|e| e.to_string()));
        let Ok(parsed) = parsed else { panic!("{parsed:?}") };
        let a = toml::to_string(&*parsed).unwrap_or_default();
        let b = toml::to_string(&Config::default()).unwrap_or_default();
        assert_eq!(a, b, "config.toml documents the defaults");
        assert!(!a.is_empty());
    }

    #[test]
    fn unknown_key_is_rejected() {
        let r = Config::from_toml("[connections]\ntokens_per_con_max = 5\n", "x");
        assert!(matches!(r, Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn a_toml_error_is_one_line_with_its_place() {
        let text = "[api]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n";
        let Err(e) = Config::from_toml(text, "c.toml") else { panic!("accepted") };
        let e = e.to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(e.starts_with("invalid TOML in c.toml at line 3, column 1: "), "{e}");
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn a_named_file_must_exist_and_says_so_once() {
        let missing = Path::new("/nonexistent/polybook.toml");
        let Err(e) = Config::load_with_env(Some(missing), &|_| None) else { panic!("loaded") };
        assert!(matches!(e, ConfigError::Read { .. }));
        let text = e.to_string();
        assert_eq!(text.matches("No such file").count(), 1, "{text}");
        assert!(std::error::Error::source(&e).is_none(), "the cause is in the message only");
    }

    #[test]
    fn out_of_range_limits_are_rejected_with_the_key() {
        for (text, key) in [
            ("[connections]\ntokens_per_conn_max = 900\n", "connections.tokens_per_conn_max"),
            ("[layout]\ndata_cores = []\n", "layout.data_cores"),
            ("[api]\nlisten = \"nowhere\"\n", "api.listen"),
            ("[endpoints]\nws_url = \"http://x\"\n", "endpoints.ws_url"),
            ("[api]\nlisten = \"0.0.0.0:8080\"\n", "api.listen"),
            ("[api]\nallowed_origins = [\"*\"]\n", "api.allowed_origins"),
            ("[api]\nallowed_origins = [\"https://x.example/app\"]\n", "api.allowed_origins"),
            ("[api]\nallowed_origins = [\"ftp://x.example\"]\n", "api.allowed_origins"),
            ("[api]\nconnections_max = 1000000\n", "api.connections_max"),
            ("[api]\nconnections_max = 64\nws_connections_max = 61\n", "api.ws_connections_max"),
            ("[api]\nws_connections_max = 0\n", "api.ws_connections_max"),
        ] {
            let r = Config::from_toml(text, "x").and_then(Config::validate);
            match r {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key),
                other => panic!("{text}: {other:?}"),
            }
        }
        for ok in [
            "[layout]\ndata_cores = [1, 2]\n",
            "[api]\nconnections_max = 64\n",
            "[api]\nallowed_origins = [\"https://dash.example.com\", \"http://[::1]:9000\"]\n",
            "[api]\nlisten = \"0.0.0.0:8080\"\nadmin_token = \"0123456789abcdef\"\n",
        ] {
            let r = Config::from_toml(ok, "x").and_then(Config::validate);
            assert!(r.is_ok(), "{ok}: {r:?}");
        }
        let c = Config::from_toml("[api]\nconnections_max = 64\n", "x").map(|c| c.api);
        assert_eq!(c.map(|a| a.ws_connections_limit()).ok(), Some(48));
    }

    #[test]
    fn partition_and_nats_keys_are_checked_with_the_key() {
        for (text, key) in [
            ("[selection]\npartition = \"2/2\"\n", "selection.partition"),
            ("[selection]\npartition = \"0/0\"\n", "selection.partition"),
            ("[selection]\npartition = \"half\"\n", "selection.partition"),
            ("[publish.nats]\nurl = \"\"\n", "publish.nats.url"),
            ("[publish.nats]\nsubject_prefix = \"a.>\"\n", "publish.nats.subject_prefix"),
            ("[publish.nats]\nsubject_prefix = \"a..b\"\n", "publish.nats.subject_prefix"),
            ("[publish.nats]\nchannel_capacity = 1\n", "publish.nats.channel_capacity"),
            ("[publish.nats]\nsnapshot_interval_ms = 0\n", "publish.nats.snapshot_interval_ms"),
            ("[publish.nats]\nuser = \"u\"\ntoken = \"t\"\n", "publish.nats"),
            ("[publish.nats]\npassword = \"p\"\n", "publish.nats.password"),
        ] {
            match Config::from_toml(text, "x").and_then(Config::validate) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        let ok =
            "[selection]\npartition = \"1/3\"\n[publish.nats]\nurl = \"nats://127.0.0.1:4222\"\n";
        let c = Config::from_toml(ok, "x").and_then(Config::validate);
        let Ok(c) = c else { panic!("{c:?}") };
        assert_eq!(c.selection.partition().map(|p| p.to_string()).as_deref(), Some("1/3"));
        assert!(Config::from_toml("[publish.nats]\nurl_ = \"x\"\n", "x").is_err());
    }

    #[test]
    fn tls_roots_file_is_read_at_validation_with_clear_errors() {
        let dir = std::env::temp_dir().join(format!("polybook-roots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let id = crate::net::TlsIdentity::self_signed_localhost().unwrap_or_else(|e| panic!("{e}"));
        let good = dir.join("good.pem");
        let junk = dir.join("junk.pem");
        std::fs::write(&good, id.cert_pem()).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&junk, "not a certificate\n").unwrap_or_else(|e| panic!("{e}"));
        let with = |path: &Path| {
            let text = format!("[endpoints]\ntls_roots_file = {:?}\n", path.display().to_string());
            Config::from_toml(&text, "x").and_then(Config::validate)
        };
        let valid = with(&good).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(valid.tls_roots(), [id.cert_der().clone()]);
        assert!(Config::default().validate().is_ok_and(|c| c.tls_roots().is_empty()));
        for (path, why) in [(junk, "no PEM CERTIFICATE"), (dir.join("missing.pem"), "cannot read")]
        {
            match with(&path) {
                Err(e @ ConfigError::Invalid { key: "endpoints.tls_roots_file", .. }) => {
                    assert!(e.to_string().contains(why), "{e}");
                }
                other => panic!("{}: {other:?}", path.display()),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
