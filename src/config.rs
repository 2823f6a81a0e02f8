//! User configuration for the function: key/value pairs a function reads through its
//! `Context` and its init hook receives, like Pulsar Functions' user config.
//!
//! Two sources, both JSON objects: a file (`--config`, `FUNCTION_CONFIG_FILE`) and a string
//! (`--function-config`, `FUNCTION_CONFIG`); keys in the string override the file's. String
//! values are taken as they are; other JSON values (numbers, booleans, objects) as their JSON
//! text.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context as _, bail};

/// Reads the configuration from an optional file and an optional JSON string.
pub fn load(file: Option<&Path>, inline: Option<&str>) -> anyhow::Result<HashMap<String, String>> {
    let mut config = HashMap::new();
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the config file {}", path.display()))?;
        merge(&mut config, &text)
            .with_context(|| format!("the config file {} is not valid", path.display()))?;
    }
    if let Some(text) = inline.filter(|t| !t.trim().is_empty()) {
        merge(&mut config, text).context("FUNCTION_CONFIG is not valid")?;
    }
    Ok(config)
}

fn merge(config: &mut HashMap<String, String>, text: &str) -> anyhow::Result<()> {
    let value: serde_json::Value = serde_json::from_str(text)?;
    let serde_json::Value::Object(object) = value else {
        bail!("expected a JSON object of keys and values, like {{\"greeting\": \"Hi\"}}");
    };
    for (key, value) in object {
        let value = match value {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        };
        config.insert(key, value);
    }
    Ok(())
}

/// The configuration as sorted pairs, the way the init hook receives it.
pub fn pairs(config: &HashMap<String, String>) -> Vec<(String, String)> {
    let mut pairs: Vec<_> = config.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    pairs.sort();
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_string_overrides_the_file() {
        let dir = crate::env::temp_dir().join(format!("invoker-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.json");
        std::fs::write(&file, r#"{"a": "file", "b": "file", "n": 3}"#).unwrap();
        let config = load(Some(&file), Some(r#"{"b": "env", "t": true}"#)).unwrap();
        assert_eq!(config["a"], "file");
        assert_eq!(config["b"], "env");
        assert_eq!(config["n"], "3");
        assert_eq!(config["t"], "true");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn errors_are_clear() {
        let e = load(None, Some("[1]")).unwrap_err();
        assert!(format!("{e:#}").contains("expected a JSON object"), "{e:#}");
        let e = load(Some(Path::new("/nonexistent/c.json")), None).unwrap_err();
        assert!(
            format!("{e:#}").contains("cannot read the config file"),
            "{e:#}"
        );
        assert!(load(None, Some("  ")).unwrap().is_empty());
    }
}
