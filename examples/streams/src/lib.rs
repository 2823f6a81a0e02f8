//! Streaming functions and a supplier.

#![forbid(unsafe_code)]

use std::time::Duration;

use invoker_sdk::stream::{self, Stream, StreamExt};
use invoker_sdk::{Input, Json};
use serde::Serialize;

/// The running average after each input.
#[invoker_sdk::function]
pub fn running_average(numbers: Input<f64>) -> impl Stream<Item = f64> {
    numbers.scan((0.0_f64, 0.0_f64), |(sum, count), x| {
        *sum += x;
        *count += 1.0;
        std::future::ready(Some(*sum / *count))
    })
}

/// A run of equal consecutive words.
#[derive(Debug, Serialize)]
pub struct Run {
    /// The word.
    pub word: String,
    /// How many times it occurred in a row.
    pub count: u32,
}

/// Why `rle` stopped.
#[derive(Debug)]
pub struct TooMany(String);

impl std::fmt::Display for TooMany {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Too many occurrences of {}", self.0)
    }
}

/// Run-length encoding of consecutive equal words; each run is emitted when the word changes
/// or the input ends. A third occurrence in a row ends the stream with an error.
#[invoker_sdk::function]
pub fn rle(words: Input<String>) -> impl Stream<Item = Result<Json<Run>, TooMany>> {
    enum Event {
        Word(String),
        End,
    }
    let events = words.map(Event::Word).chain(stream::iter([Event::End]));
    let mut current: Option<Run> = None;
    events
        .flat_map(move |event| {
            let out: Vec<Result<Json<Run>, TooMany>> = match event {
                Event::Word(word) => match current.as_mut() {
                    Some(run) if run.word == word => {
                        run.count += 1;
                        if run.count >= 3 {
                            vec![Err(TooMany(word))]
                        } else {
                            vec![]
                        }
                    }
                    _ => current
                        .replace(Run { word, count: 1 })
                        .map(|run| Ok(Json(run)))
                        .into_iter()
                        .collect(),
                },
                Event::End => current
                    .take()
                    .map(|run| Ok(Json(run)))
                    .into_iter()
                    .collect(),
            };
            stream::iter(out)
        })
        .scan(false, |failed, item| {
            // Nothing follows the first error.
            if *failed {
                return std::future::ready(None);
            }
            *failed = item.is_err();
            std::future::ready(Some(item))
        })
}

/// A supplier: 0, 1, 2, … one every 10 ms, until the caller goes away.
#[invoker_sdk::function]
pub fn ticker() -> impl Stream<Item = u64> {
    invoker_sdk::time::interval(Duration::from_millis(10))
        .enumerate()
        .map(|(i, ())| i as u64)
}

/// Two outputs: the even numbers, and the odd ones. Each output completes on its own.
#[invoker_sdk::function]
pub fn partition(numbers: Input<i64>) -> (impl Stream<Item = i64>, impl Stream<Item = i64>) {
    invoker_sdk::fan_out::partition(numbers, |n: &i64| n % 2 == 0)
}

/// Echoes every input unchanged: the identity on a stream of bytes.
#[invoker_sdk::function]
pub fn echo(input: Input<invoker_sdk::Bytes>) -> impl Stream<Item = invoker_sdk::Bytes> {
    input
}
