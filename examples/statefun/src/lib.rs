//! Stateful functions for Apache Flink StateFun, in namespace `example`, served by
//! `invoker statefun` (README, "On Flink StateFun"):
//!
//! | function type | message | state | what it does |
//! |---|---|---|---|
//! | `example/greeter` | string: a name | `seen`: int | counts the visits; egress `example/greets` `Hello {name}, visit {seen}` |
//! | `example/relay` | string `s` | none | sends `s` to `example/greeter` id `s` |
//! | `example/reminder` | string: `set`, `cancel` or `ping` | none | `set`: `ping` to itself in 60 s (token `reminder-{id}`); `cancel`: cancels it; `ping`: egress `ping for {id}` |
//! | `example/session` | string `s` | `last`: string, expires 300 s after the last invocation | egress `previous: {last}` (or `previous: none`), then remembers `s`; `forget` deletes `last` (egress `forgotten`) |
//! | `example/profile` | `example/Person` JSON | `person`: `example/Person`, expires a day after it was written | stores the person; egress `{name} is {age}`; a negative age fails |

#![forbid(unsafe_code)]

use std::time::Duration;

use invoker_sdk::Json;
use invoker_sdk::statefun::{Address, Context, JsonType, ValueSpec};
use serde::{Deserialize, Serialize};

/// Where every function's egress records go.
const GREETS: &str = "example/greets";

/// How often an address has been greeted.
const SEEN: ValueSpec<i32> = ValueSpec::new("seen");

/// Greets `name`, counting the visits of this address.
#[invoker_sdk::statefun(type = "example/greeter", state = [SEEN])]
fn greeter(ctx: &Context, name: String) -> Result<(), String> {
    let seen = ctx.get(&SEEN).map_err(|e| e.to_string())?.unwrap_or(0) + 1;
    ctx.set(&SEEN, &seen);
    ctx.egress(GREETS, &format!("Hello {name}, visit {seen}"));
    Ok(())
}

/// Passes `s` on to the greeter whose id is `s`.
#[invoker_sdk::statefun(type = "example/relay")]
fn relay(ctx: &Context, s: String) {
    ctx.send(&Address::new("example/greeter", &s), &s);
}

/// How long a reminder takes.
const REMINDER_DELAY: Duration = Duration::from_millis(60_000);

/// Sets, cancels and delivers a reminder to itself.
#[invoker_sdk::statefun(type = "example/reminder")]
fn reminder(ctx: &Context, command: String) -> Result<(), String> {
    let me = ctx.self_address();
    let token = format!("reminder-{}", me.id);
    match command.as_str() {
        "set" => ctx.send_after(REMINDER_DELAY, &me, &"ping".to_owned(), Some(&token)),
        "cancel" => ctx.cancel_delayed(&token),
        "ping" => ctx.egress(GREETS, &format!("ping for {}", me.id)),
        other => return Err(format!("unknown command '{other}': set, cancel or ping")),
    }
    Ok(())
}

/// The last string a session saw, forgotten five minutes after its last message.
const LAST: ValueSpec<String> =
    ValueSpec::new("last").expire_after_invoke(Duration::from_millis(300_000));

/// Tells the previous string of the session, and remembers this one.
#[invoker_sdk::statefun(type = "example/session", state = [LAST])]
fn session(ctx: &Context, s: String) -> Result<(), String> {
    if s == "forget" {
        ctx.remove(&LAST);
        ctx.egress(GREETS, &"forgotten".to_owned());
        return Ok(());
    }
    let last = ctx.get(&LAST).map_err(|e| e.to_string())?;
    let previous = last.as_deref().unwrap_or("none");
    ctx.egress(GREETS, &format!("previous: {previous}"));
    ctx.set(&LAST, &s);
    Ok(())
}

/// A person, carried as JSON under the typename `example/Person`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Person {
    /// The name.
    pub name: String,
    /// The age in years.
    pub age: i32,
}

impl JsonType for Person {
    const TYPENAME: &'static str = "example/Person";
}

/// The person of this address, kept for a day after it was last written.
const PERSON: ValueSpec<Json<Person>> =
    ValueSpec::new("person").expire_after_write(Duration::from_millis(86_400_000));

/// Stores a person and tells their age.
#[invoker_sdk::statefun(type = "example/profile", state = [PERSON])]
fn profile(ctx: &Context, Json(person): Json<Person>) -> Result<(), String> {
    if person.age < 0 {
        return Err("negative age".into());
    }
    ctx.egress(GREETS, &format!("{} is {}", person.name, person.age));
    ctx.set(&PERSON, &Json(person));
    Ok(())
}
