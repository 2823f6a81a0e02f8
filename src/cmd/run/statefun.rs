//! `invoker run` on a StateFun library: the in-memory StateFun (`server::statefun::local`)
//! fed from stdin and reporting on stdout (SPEC §10, "Embedded default"; README, "Trying it
//! without a cluster").
//!
//! Each input line is `{"to": "NAMESPACE/TYPE/ID", "value": ...}`, with an optional `"type"`
//! (the message's typename) and `"value_base64"` for raw bytes instead of `"value"`; each
//! egress record is a line `{"egress": "NAMESPACE/TYPE", "type": ..., "value": ...}` (a Kafka
//! producer record: `{"egress", "topic", "key", "value"}`). A line that is not a message, and
//! an invocation that fails, is reported on stderr with its line number (a failure caused by a
//! message a function sent, with the number of the input line it descends from), and the run
//! goes on; the exit code is then the first failure's. The run ends when the input has ended
//! and no message, delayed or not, is pending.
//!
//! Bounds: an input line of at most [`MAX_LINE`] bytes (a longer one is skipped), at most
//! [`LINES_AHEAD`] lines read ahead of the cluster; the cluster's own (`LocalOptions`).

use std::io::Write as _;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use prost::Message as _;
use serde_json::{Map, Value, json};
use tokio::io::AsyncBufReadExt as _;

use super::{BAD_LINE, FirstFailure};
use crate::cli::RunArgs;
use crate::cmd::Exit;
use crate::engine::pool::{Limits as PoolLimits, Pool};
use crate::function::uri::FunctionUri;
use crate::function::{Library, TypedValue};
use crate::proto::statefun::egress::KafkaProducerRecord;
use crate::proto::statefun::types::{
    BooleanWrapper, DoubleWrapper, FloatWrapper, IntWrapper, LongWrapper, StringWrapper,
};
use crate::server::statefun::local::{Envelope, Local, LocalOptions, Outcome};
use crate::stats::Stats;

/// The longest input line, in bytes.
pub const MAX_LINE: usize = 16 << 20;

/// Input lines read ahead of the cluster.
const LINES_AHEAD: usize = 16;

const STRING: &str = "io.statefun.types/string";
const INT: &str = "io.statefun.types/int";
const LONG: &str = "io.statefun.types/long";
const FLOAT: &str = "io.statefun.types/float";
const DOUBLE: &str = "io.statefun.types/double";
const BOOL: &str = "io.statefun.types/bool";
const KAFKA: &str = "type.googleapis.com/io.statefun.sdk.egress.KafkaProducerRecord";

/// Whether `invoker run` runs `library` as an in-memory StateFun: it has a stateful function,
/// and the handler, if one is named, is one.
pub(super) fn serves(library: &Library, handler: Option<&str>) -> bool {
    let stateful = |name: &str| {
        library
            .function(Some(name))
            .is_ok_and(|f| f.info().stateful.is_some())
    };
    match handler {
        Some(name) => stateful(name),
        None => library.handlers().into_iter().any(stateful),
    }
}

/// Runs the in-memory StateFun over every stateful function of `library`.
pub(super) fn run(
    library: Library,
    uri: &FunctionUri,
    config: std::collections::HashMap<String, String>,
    args: &RunArgs,
) -> anyhow::Result<Exit> {
    if args.content_type.is_some() || args.accept.is_some() {
        anyhow::bail!(
            "{} is a StateFun library: its input is NDJSON messages ({{\"to\": \"NAMESPACE/TYPE/ID\", \"value\": ...}}), without --content-type or --accept",
            uri.path.display()
        );
    }
    let pairs: Vec<(String, String)> = config.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    library
        .init(&pairs)
        .map_err(|e| anyhow::anyhow!("the init hook of {} failed: {e}", uri.path.display()))?;
    let stats = Arc::new(Stats::new());
    let pool = Arc::new(Pool::new(
        PoolLimits::default_for_this_machine(),
        stats.clone(),
    ));
    let functions =
        crate::cmd::statefun::stateful_functions(&library, Arc::new(config), &stats, &pool)?;
    let options = LocalOptions {
        time_scale: args.time_scale.unwrap_or(1.0),
        ..LocalOptions::default()
    };
    let local = Local::new(Arc::new(functions), options);
    let runtime = crate::engine::runtime()?;
    let code = runtime.block_on(async {
        tokio::select! {
            code = drive(local) => code,
            _ = tokio::signal::ctrl_c() => Ok(Exit::SUCCESS),
        }
    });
    runtime.shutdown_timeout(std::time::Duration::from_millis(300));
    library.shutdown();
    crate::function::flush_panic_log();
    code
}

/// A line of stdin: its bytes, or why it was not read.
type Line = Result<Vec<u8>, String>;

/// Reads stdin's lines into `lines`, each at most [`MAX_LINE`] bytes (a longer one is an
/// error, and the rest of it is skipped); ends at the end of the input.
async fn read_lines(lines: tokio::sync::mpsc::Sender<Line>) {
    let mut reader = tokio::io::BufReader::new(tokio::io::stdin());
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let chunk = match reader.fill_buf().await {
            Ok(chunk) => chunk,
            Err(e) => {
                let _ = lines.send(Err(format!("cannot read stdin: {e}"))).await;
                return;
            }
        };
        let (take, ends) = match chunk.iter().position(|b| *b == b'\n') {
            Some(at) => (at, true),
            None if chunk.is_empty() => (0, true),
            None => (chunk.len(), false),
        };
        let at_end = chunk.is_empty();
        if !too_long {
            if line.len() + take > MAX_LINE {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(&chunk[..take]);
            }
        }
        reader.consume(take + usize::from(ends && !at_end));
        if ends {
            if at_end && line.is_empty() && !too_long {
                return;
            }
            let read = if too_long {
                Err(format!("longer than {MAX_LINE} bytes"))
            } else {
                Ok(std::mem::take(&mut line))
            };
            too_long = false;
            if lines.send(read).await.is_err() || at_end {
                return;
            }
        }
    }
}

async fn drive(mut local: Local) -> anyhow::Result<Exit> {
    let failure = FirstFailure::default();
    let (tx, mut lines) = tokio::sync::mpsc::channel(LINES_AHEAD);
    tokio::spawn(read_lines(tx));
    let mut number = 0u64;
    let mut input_done = false;
    loop {
        local.release_due(tokio::time::Instant::now());
        if local.ready() {
            for outcome in local.deliver_next().await {
                match outcome {
                    Outcome::Egress {
                        line: _,
                        egress,
                        value,
                    } => {
                        if !print(egress_line(&egress, &value)) {
                            return Ok(failure.code());
                        }
                    }
                    Outcome::Failed {
                        line,
                        target,
                        status,
                    } => {
                        eprintln!(
                            "invoker: line {line}: {}/{}: {:?}: {}",
                            target.function_type,
                            target.id,
                            status.code(),
                            status.message()
                        );
                        failure.record(match Exit::from(status.code()) {
                            Exit::SUCCESS => Exit::FAILURE,
                            exit => exit,
                        });
                    }
                }
            }
            continue;
        }
        if input_done && local.is_idle() {
            return Ok(failure.code());
        }
        let due = local.next_due();
        tokio::select! {
            line = lines.recv(), if !input_done => match line {
                None => input_done = true,
                Some(line) => {
                    number += 1;
                    let queued = line.and_then(|line| {
                        let envelope = envelope(&local, number, &line)?;
                        match envelope {
                            Some(envelope) => local.send(envelope),
                            None => Ok(()),
                        }
                    });
                    if let Err(why) = queued {
                        eprintln!("invoker: line {number} skipped: {why}");
                        failure.record(Exit::from(BAD_LINE));
                    }
                }
            },
            () = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {}
            else => return Ok(failure.code()),
        }
    }
}

/// Prints one line; false when stdout is gone.
fn print(line: Value) -> bool {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .is_ok()
}

/// One input line as a message; `None` for a blank line.
fn envelope(local: &Local, number: u64, line: &[u8]) -> Result<Option<Envelope>, String> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        let why = e
            .to_string()
            .replacen(" at line 1 column ", " at column ", 1);
        format!("not JSON: {why}")
    })?;
    let Value::Object(mut object) = value else {
        return Err("expected a JSON object with \"to\" and \"value\"".into());
    };
    let to = match object.remove("to") {
        Some(Value::String(to)) => to,
        Some(_) => return Err("\"to\" must be a string, NAMESPACE/TYPE/ID".into()),
        None => return Err("no \"to\" (NAMESPACE/TYPE/ID)".into()),
    };
    let target = local.address(&to)?;
    let typename = match object.remove("type") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t),
        Some(_) => return Err("\"type\" must be a string, a typename".into()),
    };
    let value = object.remove("value");
    let raw = match object.remove("value_base64") {
        None | Some(Value::Null) => None,
        Some(Value::String(b)) => Some(
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| format!("\"value_base64\" is not base64: {e}"))?,
        ),
        Some(_) => return Err("\"value_base64\" must be a string".into()),
    };
    if let Some(unknown) = object.keys().next() {
        return Err(format!(
            "unknown field \"{unknown}\" (expected \"to\", \"value\" or \"value_base64\", and \"type\")"
        ));
    }
    let takes = local.message_types(&target.function_type).unwrap_or(&[]);
    let value = match (value, raw) {
        (Some(_), Some(_)) => return Err("both \"value\" and \"value_base64\"".into()),
        (None, None) => return Err("no \"value\" (nor \"value_base64\")".into()),
        (None, Some(raw)) => {
            let typename = match typename {
                Some(t) => t,
                None => match takes {
                    [only] => only.clone(),
                    _ => return Err(ambiguous(&target.function_type, takes)),
                },
            };
            TypedValue {
                typename,
                value: Bytes::from(raw),
            }
        }
        (Some(value), None) => {
            let typename = match typename {
                Some(t) => t,
                None => choose(&value, takes)
                    .ok_or_else(|| ambiguous(&target.function_type, takes))?
                    .to_owned(),
            };
            TypedValue {
                value: encode(&typename, &value)?,
                typename,
            }
        }
    };
    if !takes.contains(&value.typename) {
        return Err(format!(
            "{} takes {}, not {}",
            target.function_type,
            takes.join(", "),
            value.typename
        ));
    }
    Ok(Some(Envelope {
        line: number,
        target,
        caller: None,
        value,
    }))
}

fn ambiguous(function_type: &str, takes: &[String]) -> String {
    format!(
        "say which typename with \"type\": {function_type} takes {}",
        takes.join(", ")
    )
}

/// The typename a JSON value is sent as when the line does not say: a string as
/// `io.statefun.types/string`, a bool as `bool`, an integer as `int`, `long`, `double` or
/// `float` and any other number as `double` or `float` (the first the function takes); else
/// the function's only typename outside `io.statefun.types`, whose bytes are the JSON text.
fn choose<'a>(value: &Value, takes: &'a [String]) -> Option<&'a str> {
    let built_in: &[&str] = match value {
        Value::String(_) => &[STRING],
        Value::Bool(_) => &[BOOL],
        Value::Number(n) if n.is_i64() || n.is_u64() => &[INT, LONG, DOUBLE, FLOAT],
        Value::Number(_) => &[DOUBLE, FLOAT],
        _ => &[],
    };
    if let Some(t) = built_in
        .iter()
        .find_map(|b| takes.iter().find(|t| t.as_str() == *b))
    {
        return Some(t);
    }
    match takes
        .iter()
        .filter(|t| !t.starts_with("io.statefun.types/"))
        .collect::<Vec<_>>()
        .as_slice()
    {
        [only] => Some(only.as_str()),
        _ => None,
    }
}

/// `value` as the bytes of `typename`: a built-in type as its wrapper message, any other
/// typename as the value's JSON text.
fn encode(typename: &str, value: &Value) -> Result<Bytes, String> {
    let wrong = || format!("{value} is not a {typename}");
    let bytes = match typename {
        STRING => StringWrapper {
            value: value.as_str().ok_or_else(wrong)?.to_owned(),
        }
        .encode_to_vec(),
        BOOL => BooleanWrapper {
            value: value.as_bool().ok_or_else(wrong)?,
        }
        .encode_to_vec(),
        INT => IntWrapper {
            value: value
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .ok_or_else(wrong)?,
        }
        .encode_to_vec(),
        LONG => LongWrapper {
            value: value.as_i64().ok_or_else(wrong)?,
        }
        .encode_to_vec(),
        FLOAT => FloatWrapper {
            value: value.as_f64().ok_or_else(wrong)? as f32,
        }
        .encode_to_vec(),
        DOUBLE => DoubleWrapper {
            value: value.as_f64().ok_or_else(wrong)?,
        }
        .encode_to_vec(),
        _ => value.to_string().into_bytes(),
    };
    Ok(Bytes::from(bytes))
}

/// An egress record as its output line.
fn egress_line(egress: &str, value: &TypedValue) -> Value {
    let mut line = Map::new();
    line.insert("egress".into(), egress.into());
    if value.typename == KAFKA
        && let Ok(record) = KafkaProducerRecord::decode(value.value.clone())
    {
        line.insert("topic".into(), record.topic.into());
        line.insert("key".into(), record.key.into());
        insert_bytes(&mut line, &record.value_bytes, false);
        return Value::Object(line);
    }
    line.insert("type".into(), value.typename.clone().into());
    let bytes = &value.value;
    let decoded: Option<Value> = match value.typename.as_str() {
        STRING => StringWrapper::decode(bytes.clone())
            .ok()
            .map(|w| w.value.into()),
        BOOL => BooleanWrapper::decode(bytes.clone())
            .ok()
            .map(|w| w.value.into()),
        INT => IntWrapper::decode(bytes.clone())
            .ok()
            .map(|w| w.value.into()),
        LONG => LongWrapper::decode(bytes.clone())
            .ok()
            .map(|w| w.value.into()),
        FLOAT => FloatWrapper::decode(bytes.clone())
            .ok()
            .map(|w| json!(w.value)),
        DOUBLE => DoubleWrapper::decode(bytes.clone())
            .ok()
            .map(|w| json!(w.value)),
        _ => None,
    };
    match decoded {
        Some(v) => {
            line.insert("value".into(), v);
        }
        None => insert_bytes(&mut line, bytes, true),
    }
    Value::Object(line)
}

/// Bytes as `"value"`: their JSON when they are JSON text (and `json` is set), else a string
/// when UTF-8, else base64 as `"value_base64"`.
fn insert_bytes(line: &mut Map<String, Value>, bytes: &[u8], json: bool) {
    if json && let Ok(value) = serde_json::from_slice::<Value>(bytes) {
        line.insert("value".into(), value);
    } else if let Ok(text) = std::str::from_utf8(bytes) {
        line.insert("value".into(), text.into());
    } else {
        line.insert(
            "value_base64".into(),
            base64::engine::general_purpose::STANDARD
                .encode(bytes)
                .into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_sent_as_the_typename_its_json_chooses() {
        let takes = |t: &[&str]| t.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(choose(&json!("a"), &takes(&[STRING])), Some(STRING));
        assert_eq!(choose(&json!(1), &takes(&[LONG, DOUBLE])), Some(LONG));
        assert_eq!(choose(&json!(1.5), &takes(&[LONG, DOUBLE])), Some(DOUBLE));
        assert_eq!(choose(&json!(true), &takes(&[STRING])), None);
        assert_eq!(
            choose(&json!({"a": 1}), &takes(&[STRING, "example/Person"])),
            Some("example/Person")
        );
        assert_eq!(choose(&json!({}), &takes(&["a/b", "c/d"])), None);
        assert!(encode(INT, &json!(1u64 << 40)).is_err());
        assert_eq!(
            egress_line(
                "e/x",
                &TypedValue {
                    typename: INT.into(),
                    value: encode(INT, &json!(-3)).unwrap(),
                }
            ),
            json!({"egress": "e/x", "type": INT, "value": -3})
        );
    }
}
