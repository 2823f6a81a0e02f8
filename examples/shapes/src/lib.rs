//! One function per request/reply shape.

#![forbid(unsafe_code)]

/// `f(X) -> Result<()>`: fails when the input mentions Riff.
#[invoker_sdk::function]
pub fn validate(s: String) -> Result<(), String> {
    if s.contains("Riff") {
        return Err(format!("{s} contained 'Riff'"));
    }
    Ok(())
}

/// `f(&Context, X)`: a consumer that logs its input through the invoker.
#[invoker_sdk::function]
pub fn record(ctx: &invoker_sdk::Context, s: String) {
    ctx.log_info(&format!("recorded: {s}"));
}

/// `f() -> Result<Y>`.
#[invoker_sdk::function]
pub fn five() -> Result<i64, String> {
    Ok(5)
}

/// `f() -> Y`.
#[invoker_sdk::function]
pub fn answer() -> i64 {
    42
}

/// `f() -> Result<Y>` that always fails.
#[invoker_sdk::function]
pub fn broken() -> Result<i64, String> {
    Err("broken".to_owned())
}

/// `f()`: does nothing at all.
#[invoker_sdk::function]
pub fn nothing() {}

/// `f(X)` that panics with its input as the message.
#[invoker_sdk::function]
pub fn panics(s: String) {
    panic!("{s}");
}
