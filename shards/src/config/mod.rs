//! `config.toml`: parsed with unknown keys rejected, then validated once into [`ValidConfig`],
//! which the rest of the runtime takes as proof that every limit is in range.
//!
//! `sections` holds one struct per TOML table with its defaults; `validate` the range checks.

use futures_rustls::pki_types::CertificateDer;
use serde::Deserialize;
use std::path::Path;

mod sections;
mod validate;

pub use sections::{
    Api, AutoWord, Connections, DataCores, Discovery, Endpoints, Integrity, Layout, Lifecycle, Log,
    Nats, Publish, Secret, Selection, HTTP_CONNECTIONS_RESERVED_MIN,
};

/// Everything that can be wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("invalid TOML in {path}: {source}")]
    Parse { path: String, source: Box<toml::de::Error> },
    #[error("{key} = {value}: {why}")]
    Invalid { key: &'static str, value: String, why: String },
}

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

impl Config {
    pub fn from_toml(text: &str, path: &str) -> Result<Config, ConfigError> {
        toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), source: Box::new(e) })
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::Read { path: p.clone(), source: e })?;
        Config::from_toml(&text, &p)
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
