//! The loader: every example library's handlers through the safe API, and every load error.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{self, BoxStream};
use invoker::function::{
    BoxInput, CallContext, Function, FunctionError, InputMessage, Library, LoadError, OutputStream,
    Shape,
};
use invoker::stats::Stats;

/// A function of a workspace library, loaded once per test binary: every load is a fresh copy
/// with its own statics, and some tests call one function to observe another (`arm`, `fire`).
fn function(lib: &str, handler: &str) -> Function {
    static LOADED: std::sync::Mutex<Vec<(String, Arc<Library>)>> =
        std::sync::Mutex::new(Vec::new());
    let mut loaded = LOADED.lock().unwrap_or_else(|p| p.into_inner());
    let library = match loaded.iter().find(|(name, _)| name == lib) {
        Some((_, library)) => library.clone(),
        None => {
            let library = Arc::new(Library::load(common::lib(lib)).unwrap());
            loaded.push((lib.to_owned(), library.clone()));
            library
        }
    };
    library.function(Some(handler)).unwrap()
}

fn ctx(f: &Function) -> CallContext {
    CallContext {
        function_name: f.info().name.as_str().into(),
        ..CallContext::default()
    }
}

/// A message whose media type is the input port's first.
fn text(s: &str) -> InputMessage {
    InputMessage {
        payload: Bytes::copy_from_slice(s.as_bytes()),
        ..InputMessage::default()
    }
}

/// The index of a media type among the function's input types.
fn input_type(f: &Function, media_type: &str) -> usize {
    f.info().inputs[0]
        .media_types
        .iter()
        .position(|t| t == media_type)
        .unwrap()
}

fn output_type(f: &Function, media_type: &str) -> usize {
    f.info().outputs[0]
        .media_types
        .iter()
        .position(|t| t == media_type)
        .unwrap()
}

/// Calls a one-input request/reply function with a text payload; the output as a string.
fn call(f: &Function, input: &str) -> Result<Option<String>, FunctionError> {
    let out = f.invoke(&ctx(f), Some(&text(input)), 0)?;
    Ok(out.map(|m| String::from_utf8(m.payload.to_vec()).unwrap()))
}

fn call0(f: &Function) -> Result<Option<String>, FunctionError> {
    let out = f.invoke(&ctx(f), None, 0)?;
    Ok(out.map(|m| String::from_utf8(m.payload.to_vec()).unwrap()))
}

fn inputs(items: Vec<&str>) -> BoxInput {
    let items: Vec<InputMessage> = items.into_iter().map(text).collect();
    Box::pin(stream::iter(items))
}

fn outputs(mut out: OutputStream) -> BoxStream<'static, Result<String, FunctionError>> {
    stream::poll_fn(move |cx| out.poll_next(cx, 0))
        .map(|r| r.map(|m| String::from_utf8(m.payload.to_vec()).unwrap()))
        .boxed()
}

fn open(f: &Function, items: Vec<&str>) -> BoxStream<'static, Result<String, FunctionError>> {
    let mut streams = f.open(&ctx(f), vec![inputs(items)]).unwrap();
    assert_eq!(streams.len(), 1);
    outputs(streams.remove(0))
}

#[test]
fn greeter_hello() {
    let f = function("greeter", "hello");
    assert_eq!(f.info().shape, Shape::RequestReply);
    // In preference order (SPEC §5): text, then a JSON string, then UTF-8 octets.
    assert_eq!(
        f.info().inputs[0].media_types,
        ["text/plain", "application/json", "application/octet-stream"]
    );
    assert_eq!(
        f.info().outputs[0].media_types,
        ["text/plain", "application/json"]
    );
    assert_eq!(call(&f, "World"), Ok(Some("Hello World".into())));
    assert_eq!(
        call(&f, "Riff"),
        Err(FunctionError::Failed("error condition".into()))
    );
}

#[test]
fn greeter_double_text_and_json() {
    let f = function("greeter", "double");
    assert_eq!(call(&f, "21"), Ok(Some("42".into())));
    let json_in = InputMessage {
        media_type: input_type(&f, "application/json"),
        ..text("-4")
    };
    let out = f
        .invoke(
            &ctx(&f),
            Some(&json_in),
            output_type(&f, "application/json"),
        )
        .unwrap()
        .unwrap();
    assert_eq!(out.payload, Bytes::from_static(b"-8"));
    match call(&f, "foo") {
        Err(FunctionError::BadInput(m)) => {
            assert!(m.starts_with("Invoker: Bad Input Signal"), "{m}");
            assert!(m.contains("'foo' is not a valid i64"), "{m}");
        }
        other => panic!("expected a bad input, got {other:?}"),
    }
}

#[test]
fn greeter_greet_json_takes_json_and_forms() {
    let f = function("greeter", "greet_json");
    assert_eq!(f.info().outputs[0].media_types, ["application/json"]);
    assert_eq!(
        f.info().inputs[0].media_types,
        ["application/json", "application/x-www-form-urlencoded"]
    );
    let json = InputMessage {
        media_type: input_type(&f, "application/json"),
        ..text(r#"{"name":"Ada"}"#)
    };
    let out = f.invoke(&ctx(&f), Some(&json), 0).unwrap().unwrap();
    assert_eq!(
        out.payload,
        Bytes::from_static(br#"{"greeting":"Hello Ada"}"#)
    );
    let form = InputMessage {
        media_type: input_type(&f, "application/x-www-form-urlencoded"),
        ..text("name=Grace+Hopper")
    };
    let out = f.invoke(&ctx(&f), Some(&form), 0).unwrap().unwrap();
    assert_eq!(
        out.payload,
        Bytes::from_static(br#"{"greeting":"Hello Grace Hopper"}"#)
    );
    let bad = InputMessage {
        media_type: input_type(&f, "application/json"),
        ..text("{not json")
    };
    assert!(
        matches!(f.invoke(&ctx(&f), Some(&bad), 0), Err(FunctionError::BadInput(m)) if m.contains("invalid JSON"))
    );
}

#[test]
fn rot13_is_the_only_function() {
    let lib = Library::load(common::lib("rot13")).unwrap();
    assert_eq!(lib.handlers(), ["encode"]);
    let f = lib.function(None).unwrap();
    assert_eq!(call(&f, "Hello World"), Ok(Some("Uryyb Jbeyq".into())));
}

#[test]
fn shapes_every_request_reply_form() {
    let validate = function("shapes", "validate");
    assert!(validate.info().outputs.is_empty());
    assert_eq!(call(&validate, "fine"), Ok(None));
    assert_eq!(
        call(&validate, "I love Riff"),
        Err(FunctionError::Failed("I love Riff contained 'Riff'".into()))
    );
    assert_eq!(call(&function("shapes", "record"), "note"), Ok(None));
    assert!(function("shapes", "record").info().uses_context);
    assert_eq!(call0(&function("shapes", "five")), Ok(Some("5".into())));
    assert_eq!(call0(&function("shapes", "answer")), Ok(Some("42".into())));
    assert_eq!(
        call0(&function("shapes", "broken")),
        Err(FunctionError::Failed("broken".into()))
    );
    let nothing = function("shapes", "nothing");
    assert!(nothing.info().inputs.is_empty() && nothing.info().outputs.is_empty());
    assert_eq!(call0(&nothing), Ok(None));
}

#[test]
fn a_panic_is_an_error_and_the_process_goes_on() {
    let f = function("shapes", "panics");
    assert_eq!(
        call(&f, "boom"),
        Err(FunctionError::Panicked("boom".into()))
    );
    assert_eq!(
        FunctionError::Panicked("boom".into()).to_string(),
        "Invoker: Function Panicked: boom"
    );
    // The library still works after the panic.
    assert_eq!(
        call(&f, "again"),
        Err(FunctionError::Panicked("again".into()))
    );
    assert_eq!(call0(&function("shapes", "answer")), Ok(Some("42".into())));
}

#[test]
fn a_library_panics_through_its_own_hook_and_leaves_the_hosts_alone() {
    // This process is the host: its hook records the panics it sees that carry the marker.
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(message) = info.payload_as_str()
            && message.starts_with("hook-marker")
        {
            SEEN.lock().unwrap().push(message.to_owned());
        }
        previous(info)
    }));
    // A library links its own std: a panic in it runs the library's hook (the SDK's), not
    // the host's.
    let f = function("shapes", "panics");
    assert_eq!(
        call(&f, "hook-marker-library"),
        Err(FunctionError::Panicked("hook-marker-library".into()))
    );
    // And the SDK's hook did not replace the host's: a panic in the host still reaches it.
    let _ = std::panic::catch_unwind(|| panic!("hook-marker-host"));
    assert_eq!(*SEEN.lock().unwrap(), ["hook-marker-host"]);
}

#[test]
fn wrong_input_arity_is_refused_without_calling() {
    let f = function("greeter", "hello");
    assert!(matches!(
        f.invoke(&ctx(&f), None, 0),
        Err(FunctionError::BadInput(_))
    ));
    let f = function("shapes", "answer");
    assert!(matches!(
        f.invoke(&ctx(&f), Some(&text("x")), 0),
        Err(FunctionError::BadInput(_))
    ));
}

#[tokio::test]
async fn running_average_streams() {
    let f = function("streams", "running_average");
    assert_eq!(f.info().shape, Shape::Streaming);
    let out: Vec<_> = open(&f, vec!["1", "2", "6", "0.5"]).collect().await;
    let out: Vec<String> = out.into_iter().map(Result::unwrap).collect();
    assert_eq!(out, ["1", "1.5", "3", "2.375"]);
}

#[tokio::test]
async fn running_average_bad_input_ends_the_stream() {
    let f = function("streams", "running_average");
    let out: Vec<_> = open(&f, vec!["1", "foo", "3"]).collect().await;
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0], Ok("1".to_owned()));
    assert!(
        matches!(&out[1], Err(FunctionError::BadInput(m)) if m.contains("'foo'")),
        "{out:?}"
    );
}

#[tokio::test]
async fn rle_encodes_runs_and_fails_on_a_third_occurrence() {
    let f = function("streams", "rle");
    let out: Vec<_> = open(&f, vec!["a", "a", "b", "c", "c"]).collect().await;
    let out: Vec<String> = out.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        out,
        [
            r#"{"word":"a","count":2}"#,
            r#"{"word":"b","count":1}"#,
            r#"{"word":"c","count":2}"#
        ]
    );
    let out: Vec<_> = open(&f, vec!["x", "y", "y", "y", "z"]).collect().await;
    assert_eq!(
        out,
        [
            Ok(r#"{"word":"x","count":1}"#.to_owned()),
            Err(FunctionError::Failed("Too many occurrences of y".into()))
        ]
    );
}

#[tokio::test]
async fn ticker_supplies_until_dropped() {
    let f = function("streams", "ticker");
    assert!(f.info().inputs.is_empty());
    let mut streams = f.open(&ctx(&f), vec![]).unwrap();
    let ticks: Vec<_> = outputs(streams.remove(0)).take(3).collect().await;
    let ticks: Vec<String> = ticks.into_iter().map(Result::unwrap).collect();
    assert_eq!(ticks, ["0", "1", "2"]);
}

#[tokio::test]
async fn a_stream_dropped_midway_releases_the_function_stream() {
    let drops = function("probe", "drops");
    let before: u64 = call0(&drops).unwrap().unwrap().parse().unwrap();
    let f = function("probe", "counted");
    // An input that yields one message and then never ends.
    let input: BoxInput = Box::pin(stream::iter([text("first")]).chain(stream::pending()));
    let mut streams = f.open(&ctx(&f), vec![input]).unwrap();
    let mut out = outputs(streams.remove(0));
    assert_eq!(out.next().await, Some(Ok("first".to_owned())));
    let pending = tokio::time::timeout(Duration::from_millis(50), out.next()).await;
    assert!(pending.is_err(), "the stream should be waiting for input");
    let after_open: u64 = call0(&drops).unwrap().unwrap().parse().unwrap();
    assert_eq!(
        after_open, before,
        "nothing dropped while the stream is alive"
    );
    drop(out);
    let after: u64 = call0(&drops).unwrap().unwrap().parse().unwrap();
    assert_eq!(after, before + 1);
}

#[tokio::test]
async fn a_panic_mid_stream_is_an_error() {
    let f = function("probe", "panics_later");
    let out: Vec<_> = open(&f, vec!["one", "two", "three"]).collect().await;
    assert_eq!(
        out,
        [
            Ok("one".to_owned()),
            Err(FunctionError::Panicked("second item: two".into()))
        ]
    );
}

#[test]
fn message_headers_cross_both_ways() {
    let f = function("probe", "echo_headers");
    let input = InputMessage {
        headers: vec![("user".into(), "ada".into())],
        ..text("hi")
    };
    let out = f.invoke(&ctx(&f), Some(&input), 0).unwrap().unwrap();
    assert_eq!(out.payload, Bytes::from_static(b"hi"));
    assert_eq!(
        out.headers,
        [
            ("echo-user".into(), "ada".into()),
            ("x-probe".into(), "yes".into())
        ]
    );
}

#[test]
fn context_reads_headers_and_name() {
    let f = function("probe", "whoami");
    let c = CallContext {
        headers: vec![("CorrelationID".into(), "c-42".into())],
        ..ctx(&f)
    };
    let out = f.invoke(&c, None, 0).unwrap().unwrap();
    assert_eq!(out.payload, Bytes::from_static(b"whoami c-42"));
}

// ---------------------------------------------------------------------------------------------
// Every request/reply shape with and without `&Context`, and every payload type

/// The context of a call to `f` with these headers and this configuration, whose custom
/// metrics go to `stats`.
fn ctx_with(
    f: &Function,
    headers: &[(&str, &str)],
    config: &[(&str, &str)],
    stats: &Arc<Stats>,
) -> CallContext {
    CallContext {
        headers: headers.iter().map(|&(n, v)| (n.into(), v.into())).collect(),
        config: Arc::new(
            config
                .iter()
                .map(|&(n, v)| (n.to_owned(), v.to_owned()))
                .collect::<HashMap<_, _>>(),
        ),
        metrics: Some(stats.clone()),
        ..ctx(f)
    }
}

/// A custom metric's value, 0 if the function never recorded it.
fn metric(stats: &Stats, name: &str) -> f64 {
    stats.snapshot().custom.get(name).copied().unwrap_or(0.0)
}

fn payload(out: Option<invoker::function::OutputMessage>) -> String {
    let out = out.expect("an output message");
    String::from_utf8(out.payload.to_vec()).unwrap()
}

#[test]
fn every_request_reply_shape_with_and_without_context_is_described() {
    // (library, handler, shape, takes an input, has an output, takes &Context); each is called
    // and its payloads and errors asserted by a test of this file.
    let shapes = [
        (
            "greeter",
            "hello",
            "f(X) -> Result<Y, E>",
            true,
            true,
            false,
        ),
        ("greeter", "double", "f(X) -> Y", true, true, false),
        ("probe", "arm", "f(X)", true, false, false),
        (
            "shapes",
            "validate",
            "f(X) -> Result<(), E>",
            true,
            false,
            false,
        ),
        ("shapes", "five", "f() -> Result<Y, E>", false, true, false),
        ("shapes", "answer", "f() -> Y", false, true, false),
        ("shapes", "nothing", "f()", false, false, false),
        ("probe", "fire", "f() -> Result<(), E>", false, false, false),
        (
            "probe",
            "ctx_order",
            "f(&Context, X) -> Result<Y, E>",
            true,
            true,
            true,
        ),
        (
            "context",
            "describe",
            "f(&Context, X) -> Y",
            true,
            true,
            true,
        ),
        ("shapes", "record", "f(&Context, X)", true, false, true),
        (
            "probe",
            "ctx_require",
            "f(&Context, X) -> Result<(), E>",
            true,
            false,
            true,
        ),
        (
            "probe",
            "ctx_greeting",
            "f(&Context) -> Result<Y, E>",
            false,
            true,
            true,
        ),
        ("probe", "whoami", "f(&Context) -> Y", false, true, true),
        ("probe", "ctx_touch", "f(&Context)", false, false, true),
        (
            "probe",
            "ctx_check",
            "f(&Context) -> Result<(), E>",
            false,
            false,
            true,
        ),
    ];
    for (lib, handler, shape, input, output, context) in shapes {
        let info = function(lib, handler).info().clone();
        assert_eq!(info.shape, Shape::RequestReply, "{shape}: {lib}/{handler}");
        assert_eq!(
            info.inputs.len(),
            usize::from(input),
            "{shape}: {lib}/{handler}"
        );
        assert_eq!(
            info.outputs.len(),
            usize::from(output),
            "{shape}: {lib}/{handler}"
        );
        assert_eq!(info.uses_context, context, "{shape}: {lib}/{handler}");
    }
}

#[test]
fn a_bool_input_without_output_and_a_unit_result_without_input() {
    let arm = function("probe", "arm");
    let fire = function("probe", "fire");
    assert_eq!(
        arm.info().inputs[0].media_types,
        ["text/plain", "application/json"]
    );
    assert_eq!(call(&arm, "false"), Ok(None));
    assert_eq!(call0(&fire), Err(FunctionError::Failed("not armed".into())));
    assert_eq!(call(&arm, " true\n"), Ok(None));
    assert_eq!(call0(&fire), Ok(None));
    match call(&arm, "yes") {
        Err(FunctionError::BadInput(m)) => {
            assert!(m.starts_with("Invoker: Bad Input Signal"), "{m}");
            assert!(m.contains("'yes' is not a valid bool"), "{m}");
        }
        other => panic!("expected a bad input, got {other:?}"),
    }
    let json_false = InputMessage {
        media_type: input_type(&arm, "application/json"),
        ..text("false")
    };
    assert_eq!(arm.invoke(&ctx(&arm), Some(&json_false), 0), Ok(None));
    assert_eq!(call0(&fire), Err(FunctionError::Failed("not armed".into())));
}

#[test]
fn bool_and_static_str_outputs() {
    let negate = function("probe", "negate");
    assert_eq!(
        negate.info().outputs[0].media_types,
        ["text/plain", "application/json"]
    );
    assert_eq!(call(&negate, "true"), Ok(Some("false".into())));
    assert_eq!(call(&negate, "false"), Ok(Some("true".into())));
    let json = InputMessage {
        media_type: input_type(&negate, "application/json"),
        ..text("false")
    };
    let out = negate.invoke(
        &ctx(&negate),
        Some(&json),
        output_type(&negate, "application/json"),
    );
    assert_eq!(payload(out.unwrap()), "true");
    let not_json = InputMessage {
        media_type: input_type(&negate, "application/json"),
        ..text("1")
    };
    assert!(matches!(
        negate.invoke(&ctx(&negate), Some(&not_json), 0),
        Err(FunctionError::BadInput(m)) if m.contains("expected a JSON bool")
    ));

    let yes_no = function("probe", "yes_no");
    assert_eq!(
        yes_no.info().outputs[0].media_types,
        ["text/plain", "application/json"]
    );
    assert_eq!(call(&yes_no, "true"), Ok(Some("yes".into())));
    assert_eq!(call(&yes_no, "false"), Ok(Some("no".into())));
}

#[test]
fn bytes_in_and_out_are_not_text() {
    let f = function("probe", "bytes_echo");
    assert_eq!(
        f.info().inputs[0].media_types,
        ["application/octet-stream", "text/plain"]
    );
    assert_eq!(
        f.info().outputs[0].media_types,
        ["application/octet-stream"]
    );
    let binary = Bytes::from_static(&[0, 159, 146, 150, 255, b'\n']);
    let input = InputMessage {
        payload: binary.clone(),
        ..InputMessage::default()
    };
    let out = f.invoke(&ctx(&f), Some(&input), 0).unwrap().unwrap();
    assert_eq!(out.payload, binary);
    assert!(out.headers.is_empty());
    let as_text = InputMessage {
        media_type: input_type(&f, "text/plain"),
        ..text("plain words")
    };
    let out = f.invoke(&ctx(&f), Some(&as_text), 0).unwrap().unwrap();
    assert_eq!(out.payload, Bytes::from_static(b"plain words"));
    let empty = InputMessage::default();
    let out = f.invoke(&ctx(&f), Some(&empty), 0).unwrap().unwrap();
    assert!(out.payload.is_empty());
}

#[test]
fn a_form_in_and_out_with_context_and_a_result() {
    let f = function("probe", "ctx_order");
    assert_eq!(
        f.info().inputs[0].media_types,
        ["application/x-www-form-urlencoded"]
    );
    assert_eq!(
        f.info().outputs[0].media_types,
        ["application/x-www-form-urlencoded"]
    );
    assert_eq!(
        call(&f, "item=green+tea&quantity=2"),
        Ok(Some("item=green+tea&quantity=2&by=ctx_order".into()))
    );
    assert_eq!(
        call(&f, "quantity=0&item=tea"),
        Err(FunctionError::Failed(
            "ctx_order: cannot order no tea".into()
        ))
    );
    match call(&f, "item=tea&quantity=lots") {
        Err(FunctionError::BadInput(m)) => {
            assert!(m.starts_with("Invoker: Bad Input Signal"), "{m}");
            assert!(m.contains("invalid form"), "{m}");
        }
        other => panic!("expected a bad input, got {other:?}"),
    }
    assert!(
        matches!(call(&f, "item=tea"), Err(FunctionError::BadInput(m)) if m.contains("quantity"))
    );
}

#[test]
fn context_and_an_input_to_a_json_output() {
    let f = function("context", "describe");
    let stats = Arc::new(Stats::new());
    let c = ctx_with(
        &f,
        &[("correlationId", "c-7")],
        &[("greeting", "Hi")],
        &stats,
    );
    let out = f.invoke(&c, Some(&text("ping")), 0).unwrap();
    let json: serde_json::Value = serde_json::from_str(&payload(out)).unwrap();
    assert_eq!(json["function"], "describe");
    assert_eq!(json["correlation_id"], "c-7");
    assert_eq!(json["greeting"], "Hi");
    assert_eq!(json["farewell"], serde_json::Value::Null);
    assert_eq!(json["input"], "ping");
    assert_eq!(metric(&stats, "described"), 1.0);
}

#[test]
fn context_and_an_input_to_a_unit_result() {
    let f = function("probe", "ctx_require");
    let stats = Arc::new(Stats::new());
    let c = ctx_with(&f, &[], &[], &stats);
    assert_eq!(f.invoke(&c, Some(&text("true")), 0), Ok(None));
    assert_eq!(metric(&stats, "probe.required"), 1.0);
    assert_eq!(
        f.invoke(&c, Some(&text("false")), 0),
        Err(FunctionError::Failed("ctx_require requires true".into()))
    );
    assert_eq!(metric(&stats, "probe.required"), 1.0);
}

#[test]
fn context_alone_to_a_fallible_static_str() {
    let f = function("probe", "ctx_greeting");
    assert_eq!(
        f.info().outputs[0].media_types,
        ["text/plain", "application/json"]
    );
    let stats = Arc::new(Stats::new());
    let greet = |config: &[(&str, &str)]| {
        let out = f.invoke(&ctx_with(&f, &[], config, &stats), None, 0)?;
        Ok(payload(out))
    };
    assert_eq!(greet(&[("greeting", "formal")]), Ok("Good day".to_owned()));
    assert_eq!(greet(&[("greeting", "casual")]), Ok("Hi".to_owned()));
    assert_eq!(
        greet(&[("greeting", "rude")]),
        Err(FunctionError::Failed("unknown greeting 'rude'".into()))
    );
    assert_eq!(
        greet(&[]),
        Err(FunctionError::Failed("no greeting configured".into()))
    );
}

#[test]
fn context_alone_with_no_output() {
    let f = function("probe", "ctx_touch");
    let stats = Arc::new(Stats::new());
    let c = ctx_with(&f, &[], &[], &stats);
    assert_eq!(f.invoke(&c, None, 0), Ok(None));
    assert_eq!(f.invoke(&c, None, 0), Ok(None));
    assert_eq!(metric(&stats, "probe.touched"), 2.0);
    assert!(matches!(
        f.invoke(&c, Some(&text("x")), 0),
        Err(FunctionError::BadInput(_))
    ));
    assert_eq!(metric(&stats, "probe.touched"), 2.0);
}

#[test]
fn context_alone_to_a_unit_result() {
    let f = function("probe", "ctx_check");
    let stats = Arc::new(Stats::new());
    let with_id = ctx_with(&f, &[("correlationId", "c-1")], &[], &stats);
    assert_eq!(f.invoke(&with_id, None, 0), Ok(None));
    let without = ctx_with(&f, &[("other", "x")], &[], &stats);
    assert_eq!(
        f.invoke(&without, None, 0),
        Err(FunctionError::Failed("ctx_check: no correlationId".into()))
    );
}

#[tokio::test]
async fn a_streaming_function_with_context() {
    let f = function("probe", "ctx_echo");
    assert_eq!(f.info().shape, Shape::Streaming);
    assert!(f.info().uses_context);
    let out: Vec<_> = open(&f, vec!["a", "b"]).collect().await;
    assert_eq!(
        out,
        [
            Ok("ctx_echo".to_owned()),
            Ok("a".to_owned()),
            Ok("b".to_owned())
        ]
    );
    let out: Vec<_> = open(&f, vec![]).collect().await;
    assert_eq!(out, [Ok("ctx_echo".to_owned())]);
}

// ---------------------------------------------------------------------------------------------
// Load errors

#[test]
fn a_missing_file_is_named() {
    let e = Library::load("/nonexistent/libnothing.so").unwrap_err();
    assert!(matches!(e, LoadError::Missing { .. }));
    assert_eq!(
        e.to_string(),
        "function library /nonexistent/libnothing.so does not exist: check FUNCTION_URI"
    );
}

#[test]
fn a_file_that_is_not_a_library() {
    let dir = common::scratch("loader", "not-a-library");
    let path = dir.join("libtext.so");
    std::fs::write(&path, "just some text\n").unwrap();
    let e = Library::load(&path).unwrap_err();
    assert!(matches!(e, LoadError::NotALibrary { .. }), "{e:?}");
    let message = e.to_string();
    assert!(
        message.starts_with(&format!(
            "{} is not a loadable shared library",
            path.display()
        )),
        "{message}"
    );
}

#[test]
fn a_library_without_the_root_symbol() {
    let e = Library::load(common::lib("no-root")).unwrap_err();
    assert!(matches!(e, LoadError::NoRootSymbol { .. }), "{e:?}");
    assert!(
        e.to_string().contains("does not export `invoker_library`"),
        "{e}"
    );
}

#[test]
fn a_descriptor_with_only_the_first_v1_fields_loads() {
    // Fields appended to the descriptor later are read only when its size covers them.
    let library = Library::load(common::lib("v1-descriptor")).unwrap();
    assert_eq!(library.sdk_version(), "0.0.1-v1");
    assert_eq!(library.package(), None);
    assert!(library.handlers().is_empty());
    assert!(matches!(
        library.function(None).unwrap_err(),
        LoadError::NoFunctions { .. }
    ));
}

#[test]
fn a_library_names_its_package_and_version() {
    let library = Library::load(common::lib("rot13")).unwrap();
    assert_eq!(library.package(), Some(("rot13", "0.1.0")));
    let library = Library::load(common::lib("version2")).unwrap();
    assert_eq!(library.package(), Some(("version2", "2.0.0")));
}

#[test]
fn an_abi_mismatch_names_both_versions() {
    let e = Library::load(common::lib("abi-mismatch")).unwrap_err();
    assert_eq!(
        e,
        LoadError::AbiMismatch {
            path: common::lib("abi-mismatch").display().to_string(),
            library: invoker_abi::ABI_VERSION + 98,
            host: invoker_abi::ABI_VERSION,
        }
    );
    let message = e.to_string();
    assert!(
        message.contains("ABI version 99, but this invoker speaks ABI version 1"),
        "{message}"
    );
}

#[test]
fn an_unknown_handler_lists_the_handlers() {
    let lib = Library::load(common::lib("greeter")).unwrap();
    let e = lib.function(Some("goodbye")).unwrap_err();
    let message = e.to_string();
    assert!(
        message.contains("has no function 'goodbye'; it exports: "),
        "{message}"
    );
    for handler in ["double", "greet_json", "hello"] {
        assert!(message.contains(handler), "{message}");
    }
    let e = lib.function(None).unwrap_err();
    assert!(matches!(e, LoadError::HandlerNeeded { .. }), "{e:?}");
    assert!(
        e.to_string().contains("choose one with ?handler=NAME"),
        "{e}"
    );
}
