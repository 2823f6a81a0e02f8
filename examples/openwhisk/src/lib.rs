//! An Apache OpenWhisk action, served by `invoker openwhisk` (README, "On OpenWhisk"): each
//! activation's parameters arrive as a JSON object, and the result is one.
//!
//! - `greet`: `{"name": "Ada"}` to `{"greeting": "Hello Ada"}` (`Hello stranger` without a
//!   name); the name `Riff` is a function error, `error condition`.
//! - `activation`: what its `Context` knows of the activation: the `__OW_*` headers, the
//!   deadline, and the user configuration (OpenWhisk's `env`, as the init hook saw it).
//! - `sleep`: `{"ms": N}` waits N ms, or until the activation is cancelled (its deadline
//!   passing), and says how long it slept.
//! - `text`: `{"text": "x"}` to the JSON string `"x"`: not an object, so the runtime answers
//!   502.
//! - `panics`: panics with the message `boom`.
//! - an init hook that keeps the configuration's keys (`fail_init` makes it fail), and a
//!   shutdown hook that writes to the file `shutdown_file` names, if any.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use invoker_sdk::{Config, Context, Json};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

/// The configuration's keys, from the init hook.
static CONFIG_KEYS: OnceLock<Vec<String>> = OnceLock::new();

/// Where the shutdown hook reports that it ran.
static SHUTDOWN_FILE: OnceLock<String> = OnceLock::new();

/// `greet`'s parameters.
#[derive(Debug, Deserialize)]
pub struct Person {
    /// Who to greet.
    pub name: Option<String>,
}

/// `greet`'s result.
#[derive(Debug, Serialize)]
pub struct Greeting {
    /// The greeting.
    pub greeting: String,
}

/// Greets `name`, or a stranger; `Riff` is an error.
#[invoker_sdk::function]
pub fn greet(Json(person): Json<Person>) -> Result<Json<Greeting>, String> {
    let name = person.name.unwrap_or_else(|| "stranger".to_owned());
    if name == "Riff" {
        return Err("error condition".to_owned());
    }
    Ok(Json(Greeting {
        greeting: format!("Hello {name}"),
    }))
}

/// What an action learns of its activation.
#[derive(Debug, Serialize)]
pub struct Activation {
    /// `__OW_ACTIVATION_ID`.
    pub activation_id: Option<String>,
    /// `__OW_ACTION_NAME`.
    pub action_name: Option<String>,
    /// `__OW_NAMESPACE`.
    pub namespace: Option<String>,
    /// `__OW_TRANSACTION_ID`.
    pub transaction_id: Option<String>,
    /// `__OW_DEADLINE`: milliseconds since the epoch.
    pub deadline: Option<String>,
    /// Milliseconds left until the deadline.
    pub deadline_ms_left: Option<u64>,
    /// The user configuration.
    pub config: BTreeMap<String, String>,
}

/// Describes the activation it runs in.
#[invoker_sdk::function]
pub fn activation(ctx: &Context, _params: Json<IgnoredAny>) -> Json<Activation> {
    ctx.log_info("activation: describing the activation");
    let header = |name: &str| ctx.header(name).map(str::to_owned);
    let config = CONFIG_KEYS
        .get()
        .into_iter()
        .flatten()
        .filter_map(|key| Some((key.clone(), ctx.config(key)?.to_owned())))
        .collect();
    Json(Activation {
        activation_id: header("__OW_ACTIVATION_ID"),
        action_name: header("__OW_ACTION_NAME"),
        namespace: header("__OW_NAMESPACE"),
        transaction_id: header("__OW_TRANSACTION_ID"),
        deadline: header("__OW_DEADLINE"),
        deadline_ms_left: ctx.deadline().map(|d| d.as_millis() as u64),
        config,
    })
}

/// `sleep`'s parameters.
#[derive(Debug, Deserialize)]
pub struct Nap {
    /// Milliseconds to sleep.
    pub ms: u64,
}

/// `sleep`'s result.
#[derive(Debug, Serialize)]
pub struct Slept {
    /// Milliseconds slept.
    pub slept: u64,
}

/// Sleeps `ms` milliseconds, checking every 10 ms whether the activation was cancelled.
#[invoker_sdk::function]
pub fn sleep(ctx: &Context, Json(nap): Json<Nap>) -> Json<Slept> {
    let started = Instant::now();
    let wanted = Duration::from_millis(nap.ms);
    while !ctx.is_cancelled() && started.elapsed() < wanted {
        std::thread::sleep(Duration::from_millis(10).min(wanted - started.elapsed().min(wanted)));
    }
    if ctx.is_cancelled() {
        ctx.log_info("sleep: cancelled");
    }
    Json(Slept {
        slept: started.elapsed().min(wanted).as_millis() as u64,
    })
}

/// `text`'s parameters.
#[derive(Debug, Deserialize)]
pub struct Words {
    /// The text.
    pub text: String,
}

/// The text, as a JSON string: a result OpenWhisk does not take.
#[invoker_sdk::function]
pub fn text(Json(words): Json<Words>) -> String {
    words.text
}

/// Panics.
#[invoker_sdk::function]
pub fn panics(_params: Json<IgnoredAny>) -> Json<Greeting> {
    panic!("boom")
}

/// Keeps the configuration's keys; `fail_init` makes it fail.
#[invoker_sdk::init]
pub fn setup(config: &Config) -> Result<(), String> {
    if let Some(reason) = config.get("fail_init") {
        return Err(format!("init failed: {reason}"));
    }
    if let Some(path) = config.get("shutdown_file") {
        SHUTDOWN_FILE.get_or_init(|| path.to_owned());
    }
    let mut keys: Vec<String> = config.iter().map(|(k, _)| k.to_owned()).collect();
    keys.sort();
    CONFIG_KEYS.get_or_init(|| keys);
    Ok(())
}

/// Reports that it ran, when asked to.
#[invoker_sdk::shutdown]
pub fn teardown() {
    if let Some(path) = SHUTDOWN_FILE.get()
        && let Err(e) = std::fs::write(path, "shutdown hook ran\n")
    {
        eprintln!("openwhisk: cannot write {path}: {e}");
    }
}
