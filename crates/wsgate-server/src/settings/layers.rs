//! Loading: built-in defaults, then an optional file, then the environment, each key
//! parsed on its own through the [key table](super::keys), every problem collected.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use config::{Config, Environment, FileFormat, Map, Source, Value, ValueKind};

use super::build::GatewayConfig;
use super::keys::{KEYS, apply_key, is_section, sections};
use super::sections::Settings;
use super::{CONFIG_FILE_ENV, ENV_PREFIX, POD_NAME_ENV, Problem, SettingsError};

/// Loads the configuration: defaults, then `file` (TOML/YAML/JSON by extension) if
/// given, then the `WSGATE__SECTION__KEY` variables of `env`; then builds it into the
/// gateway's parts ([`Settings::build`]).
///
/// `env` is also consulted for `POD_NAME` and `HOSTNAME` (default `server.pod_id`).
/// Every problem, of parsing and of building, is reported at once in the error.
pub fn load(
    file: Option<&Path>,
    env: &HashMap<String, String>,
) -> Result<GatewayConfig, SettingsError> {
    let mut file_problems = Vec::new();
    let mut problems = Vec::new();

    let mut settings = Settings::default();
    settings.server.pod_id = default_pod_id(env);

    let mut builder = Config::builder();
    if let Some(path) = file
        && let Some(layer) = read_file_layer(path, &mut file_problems)
    {
        builder = builder.add_source(layer);
    }
    let env_vars: Map<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.len() > ENV_PREFIX.len())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    builder = builder.add_source(
        Environment::with_prefix("WSGATE")
            .prefix_separator("__")
            .separator("__")
            .source(Some(env_vars)),
    );
    let root = match builder.build().and_then(|c| c.collect()) {
        Ok(root) => root,
        Err(e) => {
            problems.push(Problem::new("configuration", e.to_string()));
            Map::new()
        }
    };

    let mut seen = HashSet::new();
    apply_table("", root, &mut settings, &mut problems, &mut seen);
    if !seen.contains("session.max_frame_bytes") {
        settings.session.max_frame_bytes = settings.session.max_message_bytes;
    }
    if !seen.contains("server.demo_page") {
        settings.server.demo_page = settings.server.listen.ip().is_loopback();
    }

    let built = settings.build();
    if file_problems.is_empty() && problems.is_empty() {
        return built;
    }
    // Keys whose value did not parse keep their default; do not also report rule
    // violations of that default on the same key.
    let unparsable: HashSet<String> = problems.iter().map(|p| p.key.clone()).collect();
    if let Err(e) = built {
        problems.extend(
            e.problems
                .into_iter()
                .filter(|p| !unparsable.contains(&p.key)),
        );
    }
    problems.sort_by(|a, b| a.key.cmp(&b.key));
    file_problems.extend(problems);
    Err(SettingsError {
        problems: file_problems,
    })
}

/// Loads the settings from the process: `file`, else the file named by `WSGATE_CONFIG`
/// (if set and non-empty), then all `WSGATE__*` variables of the process environment;
/// `POD_NAME` gives the default pod id. For the binary; tests should call [`load`].
pub fn load_from_process_env(file: Option<&Path>) -> Result<GatewayConfig, SettingsError> {
    let mut env = HashMap::new();
    let mut problems = Vec::new();
    for (k, v) in std::env::vars_os() {
        let Ok(k) = k.into_string() else { continue };
        match v.into_string() {
            Ok(v) => {
                env.insert(k, v);
            }
            Err(_) if k.starts_with(ENV_PREFIX) || k == CONFIG_FILE_ENV => {
                problems.push(Problem::new(
                    env_key_path(&k),
                    format!("environment variable {k} is not valid UTF-8"),
                ));
            }
            Err(_) => {}
        }
    }
    let from_env = env
        .get(CONFIG_FILE_ENV)
        .filter(|p| !p.trim().is_empty())
        .map(PathBuf::from);
    let path = file.map(Path::to_path_buf).or(from_env);
    match load(path.as_deref(), &env) {
        Ok(s) if problems.is_empty() => Ok(s),
        Ok(_) => Err(SettingsError { problems }),
        Err(mut e) => {
            problems.append(&mut e.problems);
            Err(SettingsError { problems })
        }
    }
}

fn env_key_path(var: &str) -> String {
    match var.strip_prefix(ENV_PREFIX) {
        Some(rest) => rest.to_ascii_lowercase().replace("__", "."),
        None => var.to_owned(),
    }
}

/// An in-memory configuration layer (the parsed file with lowercased keys).
#[derive(Debug, Clone)]
struct Layer(Map<String, Value>);

impl Source for Layer {
    fn clone_into_box(&self) -> Box<dyn Source + Send + Sync> {
        Box::new(self.clone())
    }

    fn collect(&self) -> Result<Map<String, Value>, config::ConfigError> {
        Ok(self.0.clone())
    }
}

fn read_file_layer(path: &Path, problems: &mut Vec<Problem>) -> Option<Layer> {
    let key = path.display().to_string();
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let format = match ext.as_str() {
        "toml" => FileFormat::Toml,
        "yaml" | "yml" => FileFormat::Yaml,
        "json" => FileFormat::Json,
        _ => {
            problems.push(Problem::new(
                key,
                format!("unsupported file extension {ext:?}: use .toml, .yaml, .yml or .json"),
            ));
            return None;
        }
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            problems.push(Problem::new(key, "file not found"));
            return None;
        }
        Err(e) => {
            problems.push(Problem::new(key, format!("cannot read file: {e}")));
            return None;
        }
    };
    let parsed = Config::builder()
        .add_source(config::File::from_str(&text, format))
        .build()
        .and_then(|c| c.collect());
    match parsed {
        Ok(map) => Some(Layer(lowercase_table("", map, problems))),
        Err(e) => {
            problems.push(Problem::new(key, format!("cannot parse file: {e}")));
            None
        }
    }
}

/// Lowercases every table key (keys are case-insensitive), reporting duplicates.
fn lowercase_table(
    prefix: &str,
    table: Map<String, Value>,
    problems: &mut Vec<Problem>,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in table {
        let lower = k.to_lowercase();
        let path = join(prefix, &lower);
        let origin = v.origin().map(str::to_owned);
        let v = match v.kind {
            ValueKind::Table(t) => Value::new(
                origin.as_ref(),
                ValueKind::Table(lowercase_table(&path, t, problems)),
            ),
            kind => Value::new(origin.as_ref(), kind),
        };
        if out.insert(lower, v).is_some() {
            problems.push(Problem::new(
                path,
                "key given twice (keys are case-insensitive)",
            ));
        }
    }
    out
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn apply_table(
    prefix: &str,
    table: Map<String, Value>,
    settings: &mut Settings,
    problems: &mut Vec<Problem>,
    seen: &mut HashSet<String>,
) {
    for (k, v) in table {
        let path = join(prefix, &k.to_lowercase());
        if is_section(&path) {
            match v.kind {
                ValueKind::Table(t) => apply_table(&path, t, settings, problems, seen),
                ValueKind::Nil => {}
                _ => problems.push(Problem::new(
                    path,
                    "expected a section (table of keys), got a single value",
                )),
            }
            continue;
        }
        match apply_key(settings, &path, v) {
            Some(Ok(())) => {
                seen.insert(path);
            }
            Some(Err(msg)) => {
                seen.insert(path.clone());
                problems.push(Problem::new(path, msg));
            }
            None => {
                let msg = unknown_key_message(&path);
                problems.push(Problem::new(path, msg));
            }
        }
    }
}

fn unknown_key_message(path: &str) -> String {
    let best = KEYS
        .iter()
        .copied()
        .chain(sections())
        .map(|k| (edit_distance(path, k), k))
        .min_by_key(|(d, _)| *d);
    match best {
        Some((d, k)) if d <= 2 => format!("unknown key (did you mean {k}?)"),
        _ => "unknown key".to_owned(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            let del = prev[j + 1] + 1;
            let ins = cur[j] + 1;
            cur.push(sub.min(del).min(ins));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The default pod id: `POD_NAME` from `env` if set and non-empty, else the hostname
/// (`HOSTNAME` in `env`, else `/etc/hostname`, else `"wsgate"`) + `-` + 6 random
/// lowercase alphanumeric characters.
pub fn default_pod_id(env: &HashMap<String, String>) -> String {
    if let Some(pod) = env.get(POD_NAME_ENV).map(|s| s.trim())
        && !pod.is_empty()
    {
        return pod.to_owned();
    }
    let host = env
        .get("HOSTNAME")
        .map(|h| sanitize_hostname(h))
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| sanitize_hostname(&h))
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "wsgate".to_owned());
    format!("{host}-{}", random_suffix())
}

fn sanitize_hostname(h: &str) -> String {
    h.trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(128 - 7)
        .collect()
}

fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    let mut n = hasher.finish();
    let mut out = String::with_capacity(6);
    for _ in 0..6 {
        let idx = (n % ALPHABET.len() as u64) as usize;
        out.push(char::from(ALPHABET[idx]));
        n /= ALPHABET.len() as u64;
    }
    out
}
