//! Greetings, numbers and JSON: the functions of the README's Quick start.

#![forbid(unsafe_code)]

use invoker_sdk::Json;
use serde::{Deserialize, Serialize};

/// "Hello {name}"; the name "Riff" is an error.
#[invoker_sdk::function]
pub fn hello(name: String) -> Result<String, String> {
    if name == "Riff" {
        return Err("error condition".to_owned());
    }
    Ok(format!("Hello {name}"))
}

/// Twice the number.
#[invoker_sdk::function]
pub fn double(x: i64) -> i64 {
    x.wrapping_mul(2)
}

/// A person to greet.
#[derive(Debug, Deserialize)]
pub struct Person {
    /// Their name.
    pub name: String,
}

/// A greeting.
#[derive(Debug, Serialize)]
pub struct Greeting {
    /// The greeting text.
    pub greeting: String,
}

/// `{"name": …}` (JSON or a form) to `{"greeting": "Hello …"}`.
#[invoker_sdk::function]
pub fn greet_json(Json(person): Json<Person>) -> Json<Greeting> {
    Json(Greeting {
        greeting: format!("Hello {}", person.name),
    })
}
