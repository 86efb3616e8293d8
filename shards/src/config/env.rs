//! Environment overrides for the keys operators set per deployment (containers and systemd
//! units pass settings this way). Precedence, highest first: a command-line flag, then the
//! environment, then the config file, then the default. Each variable is put into the parsed
//! TOML document before it is deserialised, so an override is checked exactly as the same key
//! in the file would be.

use super::ConfigError;

/// How a variable's text becomes a TOML value.
#[derive(Clone, Copy, Debug)]
enum Shape {
    Text,
    Bool,
    Integer,
    /// Comma-separated strings.
    TextList,
    /// `auto`, or comma-separated CPU numbers.
    Cores,
}

/// Every override: variable, the key it sets, and its shape.
const OVERRIDES: &[(&str, &str, Shape)] = &[
    ("POLYBOOK_API_LISTEN", "api.listen", Shape::Text),
    ("POLYBOOK_ADMIN_TOKEN", "api.admin_token", Shape::Text),
    ("POLYBOOK_ALLOWED_ORIGINS", "api.allowed_origins", Shape::TextList),
    ("POLYBOOK_LOG_LEVEL", "log.level", Shape::Text),
    ("POLYBOOK_LOG_JSON", "log.json", Shape::Bool),
    ("POLYBOOK_CONTROL_CORE", "layout.control_core", Shape::Integer),
    ("POLYBOOK_DATA_CORES", "layout.data_cores", Shape::Cores),
    ("POLYBOOK_IO_MEMORY_KIB", "layout.io_memory_kib", Shape::Integer),
    ("POLYBOOK_GAMMA_URL", "endpoints.gamma_url", Shape::Text),
    ("POLYBOOK_WS_URL", "endpoints.ws_url", Shape::Text),
    ("POLYBOOK_TLS_ROOTS_FILE", "endpoints.tls_roots_file", Shape::Text),
];

/// The variables and the keys they set, for help texts and docs.
pub fn env_overrides() -> impl Iterator<Item = (&'static str, &'static str)> {
    OVERRIDES.iter().map(|(var, key, _)| (*var, *key))
}

/// Puts every set variable into `doc`; returns the variables that were applied.
pub(super) fn apply(
    doc: &mut toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<&'static str>, ConfigError> {
    let mut applied = Vec::new();
    for &(var, key, shape) in OVERRIDES {
        let Some(text) = env(var) else { continue };
        let value = parse(shape, &text).map_err(|why| ConfigError::Env {
            var,
            value: if key == "api.admin_token" { "<redacted>".into() } else { text.clone() },
            why,
        })?;
        let (table, field) = key.split_once('.').unwrap_or(("", key));
        let section = doc.entry(table).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match section {
            toml::Value::Table(t) => {
                t.insert(field.to_owned(), value);
            }
            // `[api]` written as something other than a table: let deserialising say so.
            _ => continue,
        }
        applied.push(var);
    }
    Ok(applied)
}

fn parse(shape: Shape, text: &str) -> Result<toml::Value, String> {
    let t = text.trim();
    Ok(match shape {
        Shape::Text => toml::Value::String(text.to_owned()),
        Shape::Bool => match t.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => toml::Value::Boolean(true),
            "0" | "false" | "no" | "off" | "" => toml::Value::Boolean(false),
            _ => return Err("must be true or false (1/0, yes/no, on/off)".into()),
        },
        Shape::Integer => {
            toml::Value::Integer(t.parse::<i64>().map_err(|_| "must be a whole number".to_owned())?)
        }
        Shape::TextList => toml::Value::Array(
            t.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
        Shape::Cores if t.eq_ignore_ascii_case("auto") => toml::Value::String("auto".into()),
        Shape::Cores => toml::Value::Array(
            t.split(',')
                .map(|s| s.trim().parse::<i64>().map(toml::Value::Integer))
                .collect::<Result<_, _>>()
                .map_err(|_| "must be `auto` or CPU numbers separated by commas".to_owned())?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, DataCores};

    fn env_of<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn the_environment_beats_the_file_and_the_file_beats_defaults() {
        let file = "[api]\nlisten = \"127.0.0.1:9000\"\nrequests_per_s_max = 7\n";
        let env = env_of(&[
            ("POLYBOOK_API_LISTEN", "127.0.0.1:9100"),
            ("POLYBOOK_LOG_JSON", "yes"),
            ("POLYBOOK_DATA_CORES", "0, 1"),
        ]);
        let (cfg, applied) =
            Config::from_toml_with_env(file, "f", &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.api.listen, "127.0.0.1:9100");
        assert_eq!(cfg.api.requests_per_s_max, 7, "untouched keys keep the file's value");
        assert!(cfg.log.json);
        assert_eq!(cfg.layout.data_cores, DataCores::List(vec![0, 1]));
        assert_eq!(applied, ["POLYBOOK_API_LISTEN", "POLYBOOK_LOG_JSON", "POLYBOOK_DATA_CORES"]);
        let (plain, none) =
            Config::from_toml_with_env(file, "f", &env_of(&[])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plain.api.listen, "127.0.0.1:9000");
        assert!(none.is_empty());
    }

    #[test]
    fn a_bad_value_names_the_variable() {
        for (var, value) in [
            ("POLYBOOK_LOG_JSON", "maybe"),
            ("POLYBOOK_CONTROL_CORE", "first"),
            ("POLYBOOK_DATA_CORES", "1,x"),
        ] {
            let pairs = [(var, value)];
            let r = Config::from_toml_with_env("", "f", &env_of(&pairs));
            match r {
                Err(e @ ConfigError::Env { .. }) => assert!(e.to_string().contains(var), "{e}"),
                other => panic!("{var}={value}: {other:?}"),
            }
        }
        // A value of the right shape is still validated like the file's.
        let pairs = [("POLYBOOK_API_LISTEN", "nowhere")];
        let r = Config::from_toml_with_env("", "f", &env_of(&pairs)).map(|(c, _)| c.validate());
        assert!(matches!(r, Ok(Err(ConfigError::Invalid { key: "api.listen", .. }))), "{r:?}");
    }

    #[test]
    fn the_admin_token_is_not_echoed_in_errors() {
        let pairs = [("POLYBOOK_ADMIN_TOKEN", "short")];
        let r = Config::from_toml_with_env("", "f", &env_of(&pairs)).map(|(c, _)| c.validate());
        let text = format!("{r:?}");
        assert!(!text.contains("short"), "{text}");
    }

    #[test]
    fn every_override_names_a_real_key() {
        // Setting each to a value of its shape must parse: a renamed key would be unknown.
        for &(var, _, shape) in OVERRIDES {
            let value = match shape {
                Shape::Bool => "true",
                Shape::Integer => "1",
                Shape::Cores => "auto",
                Shape::Text | Shape::TextList => "x",
            };
            let pairs = [(var, value)];
            let r = Config::from_toml_with_env("", "f", &env_of(&pairs));
            assert!(r.is_ok(), "{var}: {r:?}");
        }
    }
}
