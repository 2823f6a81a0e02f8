//! A library with exactly one function, so `FUNCTION_URI` needs no `?handler=`.

#![forbid(unsafe_code)]

/// ROT13 of the text: "Hello World" becomes "Uryyb Jbeyq".
#[invoker_sdk::function]
pub fn encode(text: String) -> String {
    text.chars()
        .map(|c| match c {
            'a'..='z' => (((c as u8 - b'a') + 13) % 26 + b'a') as char,
            'A'..='Z' => (((c as u8 - b'A') + 13) % 26 + b'A') as char,
            _ => c,
        })
        .collect()
}
