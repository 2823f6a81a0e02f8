//! The in-memory StateFun of `invoker run` (SPEC §10, "Embedded default"): a cluster of one
//! process for trying and testing a library's stateful functions without Flink.
//!
//! It plays the part of the cluster: it keeps each address's persisted values for the run,
//! delivers the messages the functions send (immediately, or after their delay unless
//! cancelled), and hands egress records to its caller. Every message is delivered as a batch
//! of one invocation through the same `Engine::invoke_stateful` and `function::Batch` as the
//! remote endpoint's, so a function behaves here as it does behind a cluster. What an
//! invocation changed and sent applies only if it succeeds (as the cluster applies nothing of
//! a failed batch); unlike the cluster, a failed invocation is not retried.
//!
//! Time: delays and expirations are multiplied by [`LocalOptions::time_scale`] (0.001 makes a
//! minute 60 ms). A value declared AFTER_WRITE expires its duration after it was written; one
//! declared AFTER_INVOKE, its duration after the last successful invocation of its address
//! (a read, a write, or neither). An expired value reads as absent.
//!
//! Cancellation tokens are global to the run: cancelling a token cancels every delayed
//! message pending under it, whoever sent it; an unknown token is no error.
//!
//! Bounds ([`LocalOptions`]): what one invocation may store and send (`batch_bytes`, the
//! function's next write past it fails the invocation); messages pending, immediate and
//! delayed together (`max_pending` messages and `max_pending_bytes`); the state of every
//! address together (`max_state_bytes`, counting each address's values, its type and id, and
//! [`ADDRESS_OVERHEAD`] per address; an address with no value left holds nothing). An
//! invocation whose effects would pass a bound fails, and nothing of it applies.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tonic::Status;

use super::Functions;
use crate::engine::CallMeta;
use crate::function::{Address, Batch, Cell, Expiration, InputMessage, Sent, Stateful, TypedValue};

/// The bytes an address's state is charged beyond its values, type and id.
pub const ADDRESS_OVERHEAD: usize = 64;

/// The longest delay or expiration honoured (about a century); a longer one is this.
const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// The in-memory cluster's settings and bounds.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// What delays and expirations are multiplied by: positive and finite.
    pub time_scale: f64,
    /// What one invocation may store and send, in bytes.
    pub batch_bytes: usize,
    /// Messages pending at once, immediate and delayed.
    pub max_pending: usize,
    /// Bytes of the messages pending at once (their values, typenames and addresses).
    pub max_pending_bytes: usize,
    /// Bytes of the state of every address together.
    pub max_state_bytes: usize,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            time_scale: 1.0,
            batch_bytes: 32 << 20,
            max_pending: 100_000,
            max_pending_bytes: 256 << 20,
            max_state_bytes: 256 << 20,
        }
    }
}

/// A message for a function, and the input line it descends from (for reporting).
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The input line whose message (or a message it caused) this is.
    pub line: u64,
    /// Where to.
    pub target: Address,
    /// Who sent it: `None` for an input line.
    pub caller: Option<Address>,
    /// What.
    pub value: TypedValue,
}

impl Envelope {
    fn bytes(&self) -> usize {
        let caller = self
            .caller
            .as_ref()
            .map_or(0, |c| c.function_type.len() + c.id.len());
        self.target.function_type.len()
            + self.target.id.len()
            + caller
            + self.value.typename.len()
            + self.value.value.len()
    }
}

/// What delivering a message produced, for the caller to report.
#[derive(Debug)]
pub enum Outcome {
    /// A record sent to an egress.
    Egress {
        /// The input line it descends from.
        line: u64,
        /// The egress, `namespace/type`.
        egress: String,
        /// The record.
        value: TypedValue,
    },
    /// The invocation failed (or could not run); nothing of it applied.
    Failed {
        /// The input line it descends from.
        line: u64,
        /// The address invoked.
        target: Address,
        /// Why.
        status: Status,
    },
}

/// A stored value and when it expires.
#[derive(Debug)]
struct Stored {
    value: Bytes,
    expires: Option<Instant>,
}

impl Stored {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|at| at > now)
    }
}

/// An address's values, in the function's declaration order.
type Cells = Vec<Option<Stored>>;

fn state_size(key: &(String, String), cells: &Cells) -> usize {
    let values: usize = cells.iter().flatten().map(|s| s.value.len()).sum();
    ADDRESS_OVERHEAD + key.0.len() + key.1.len() + values
}

/// A delayed message waiting for its time.
#[derive(Debug)]
struct Delayed {
    envelope: Envelope,
    token: String,
}

/// The in-memory cluster.
pub struct Local {
    functions: Arc<Functions>,
    options: LocalOptions,
    /// Address (type, id) → its values; only addresses with a value.
    state: HashMap<(String, String), Cells>,
    state_bytes: usize,
    queue: VecDeque<Envelope>,
    /// The timer wheel: (due, sequence) → message.
    delayed: BTreeMap<(Instant, u64), Delayed>,
    /// Cancellation token → the delayed messages pending under it.
    tokens: HashMap<String, Vec<(Instant, u64)>>,
    pending_bytes: usize,
    sequence: u64,
}

impl Local {
    /// A cluster of `functions`, empty.
    pub fn new(functions: Arc<Functions>, options: LocalOptions) -> Local {
        Local {
            functions,
            options,
            state: HashMap::new(),
            state_bytes: 0,
            queue: VecDeque::new(),
            delayed: BTreeMap::new(),
            tokens: HashMap::new(),
            pending_bytes: 0,
            sequence: 0,
        }
    }

    /// The typenames the function of `function_type` takes, if the library has it.
    pub fn message_types(&self, function_type: &str) -> Option<&[String]> {
        self.functions
            .by_type
            .get(function_type)
            .map(|(_, info)| info.message_types.as_slice())
    }

    /// `ns/type/id` as an address of one of the library's function types (the longest that
    /// prefixes it, so an id may contain `/`); the id must not be empty.
    pub fn address(&self, to: &str) -> Result<Address, String> {
        let found = self
            .functions
            .by_type
            .keys()
            .filter(|t| to.len() > t.len() + 1 && to.starts_with(t.as_str()))
            .filter(|t| to.as_bytes()[t.len()] == b'/')
            .max_by_key(|t| t.len());
        match found {
            Some(t) => Ok(Address {
                function_type: t.clone(),
                id: to[t.len() + 1..].to_owned(),
            }),
            None => Err(format!(
                "\"{to}\" is not NAMESPACE/TYPE/ID of a function here (this library has: {})",
                self.functions.types().join(", ")
            )),
        }
    }

    /// Queues a message for delivery; fails when the pending messages are at their bound.
    pub fn send(&mut self, envelope: Envelope) -> Result<(), String> {
        self.fits_pending(1, envelope.bytes())?;
        self.pending_bytes += envelope.bytes();
        self.queue.push_back(envelope);
        Ok(())
    }

    fn pending(&self) -> usize {
        self.queue.len() + self.delayed.len()
    }

    fn fits_pending(&self, messages: usize, bytes: usize) -> Result<(), String> {
        if self.pending() + messages > self.options.max_pending
            || self.pending_bytes + bytes > self.options.max_pending_bytes
        {
            return Err(format!(
                "Invoker: the in-memory StateFun holds at most {} pending messages of {} bytes in all",
                self.options.max_pending, self.options.max_pending_bytes
            ));
        }
        Ok(())
    }

    /// Whether a message is ready for delivery now (delayed ones once released).
    pub fn ready(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Whether nothing is pending: no message queued and none delayed.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.delayed.is_empty()
    }

    /// When the next delayed message is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.delayed.keys().next().map(|(at, _)| *at)
    }

    /// Queues the delayed messages due by `now`, in the order they are due.
    pub fn release_due(&mut self, now: Instant) {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (key, delayed) = entry.remove_entry();
            if !delayed.token.is_empty()
                && let Some(keys) = self.tokens.get_mut(&delayed.token)
            {
                keys.retain(|k| *k != key);
                if keys.is_empty() {
                    self.tokens.remove(&delayed.token);
                }
            }
            // Still counted in pending_bytes: it moves from the wheel to the queue.
            self.queue.push_back(delayed.envelope);
        }
    }

    /// `millis` of the function's time in the run's time, at most [`MAX_DURATION`].
    fn scaled(&self, millis: u64) -> Duration {
        let seconds = millis as f64 / 1000.0 * self.options.time_scale;
        Duration::try_from_secs_f64(seconds)
            .unwrap_or(MAX_DURATION)
            .min(MAX_DURATION)
    }

    /// `millis` (scaled) after `now`; `None` only if the clock cannot count that far, which a
    /// century past any monotonic clock's reading cannot happen.
    fn after(&self, now: Instant, millis: u64) -> Option<Instant> {
        now.checked_add(self.scaled(millis))
    }

    /// Delivers the next queued message: runs its invocation and applies what it did.
    /// Returns what the caller reports (egress records, or the failure).
    pub async fn deliver_next(&mut self) -> Vec<Outcome> {
        let Some(envelope) = self.queue.pop_front() else {
            return Vec::new();
        };
        self.pending_bytes = self.pending_bytes.saturating_sub(envelope.bytes());
        let line = envelope.line;
        let target = envelope.target.clone();
        match self.deliver(envelope).await {
            Ok(outcomes) => outcomes,
            Err(status) => vec![Outcome::Failed {
                line,
                target,
                status,
            }],
        }
    }

    async fn deliver(&mut self, envelope: Envelope) -> Result<Vec<Outcome>, Status> {
        let Envelope {
            line,
            target,
            caller,
            value,
        } = envelope;
        let Some((engine, info)) = self.functions.by_type.get(&target.function_type) else {
            return Err(Status::not_found(format!(
                "Invoker: no function of type {} here (this library has: {})",
                target.function_type,
                self.functions.types().join(", ")
            )));
        };
        let (engine, info) = (engine.clone(), info.clone());
        let Some(index) = info.message_types.iter().position(|t| *t == value.typename) else {
            return Err(Status::invalid_argument(format!(
                "Invoker: a message of type {} for {}, which takes {}",
                value.typename,
                info.function_type,
                info.message_types.join(", ")
            )));
        };
        let key = (target.function_type.clone(), target.id.clone());
        let started = Instant::now();
        let stored = self.state.get(&key);
        let cells = info
            .values
            .iter()
            .enumerate()
            .map(|(i, spec)| Cell {
                name: spec.name.clone(),
                value: stored
                    .and_then(|cells| cells.get(i))
                    .and_then(Option::as_ref)
                    .filter(|s| s.live(started))
                    .map(|s| s.value.clone()),
                changed: false,
            })
            .collect();
        let batch = Arc::new(Mutex::new(Batch {
            cells,
            sent: Vec::new(),
            bytes: 0,
            limit: self.options.batch_bytes,
        }));
        let message = InputMessage {
            payload: value.value,
            headers: Vec::new(),
            media_type: index,
        };
        let stateful = Stateful {
            self_address: target.clone(),
            caller,
            batch: batch.clone(),
        };
        engine
            .invoke_stateful(CallMeta::new(None), message, stateful)
            .await?;
        let batch = std::mem::take(&mut *crate::sync::lock(&batch));
        let now = Instant::now();

        // The address's values after the invocation: those it did not change as it saw them
        // (live when it started).
        let old = self.state.get(&key);
        let mut cells: Cells = Vec::with_capacity(info.values.len());
        for (i, (cell, spec)) in batch.cells.into_iter().zip(&info.values).enumerate() {
            let kept = if cell.changed {
                cell.value.map(|value| Stored {
                    value,
                    expires: match spec.expiration {
                        Expiration::Never => None,
                        Expiration::AfterWrite(ms) | Expiration::AfterInvoke(ms) => {
                            self.after(now, ms)
                        }
                    },
                })
            } else {
                old.and_then(|cells| cells.get(i))
                    .and_then(Option::as_ref)
                    .filter(|s| s.live(started))
                    .map(|s| Stored {
                        value: s.value.clone(),
                        expires: match spec.expiration {
                            Expiration::AfterInvoke(ms) => self.after(now, ms),
                            _ => s.expires,
                        },
                    })
            };
            cells.push(kept);
        }
        let has_value = cells.iter().any(Option::is_some);
        let new_size = if has_value {
            state_size(&key, &cells)
        } else {
            0
        };

        // What it sent, against the pending bound.
        let (mut messages, mut bytes) = (0usize, 0usize);
        let outgoing: Vec<(Envelope, Option<(u64, String)>)> = batch
            .sent
            .iter()
            .filter_map(|sent| match sent {
                Sent::Message { target: to, value } => Some((
                    Envelope {
                        line,
                        target: to.clone(),
                        caller: Some(target.clone()),
                        value: value.clone(),
                    },
                    None,
                )),
                Sent::Delayed {
                    target: to,
                    value,
                    delay_millis,
                    cancellation_token,
                } => Some((
                    Envelope {
                        line,
                        target: to.clone(),
                        caller: Some(target.clone()),
                        value: value.clone(),
                    },
                    Some((*delay_millis, cancellation_token.clone())),
                )),
                Sent::Cancel { .. } | Sent::Egress { .. } => None,
            })
            .inspect(|(envelope, _)| {
                messages += 1;
                bytes += envelope.bytes();
            })
            .collect();

        // Check both bounds before applying anything; the state bound after dropping what
        // has expired everywhere.
        let old_size = |local: &Local| {
            local
                .state
                .get(&key)
                .map_or(0, |cells| state_size(&key, cells))
        };
        let over_state = |local: &Local| {
            local.state_bytes - old_size(local) + new_size > local.options.max_state_bytes
        };
        if over_state(self) {
            self.sweep_expired(now);
        }
        let refused = if over_state(self) {
            Some(format!(
                "Invoker: the in-memory StateFun holds at most {} bytes of state",
                self.options.max_state_bytes
            ))
        } else {
            self.fits_pending(messages, bytes).err()
        };
        if let Some(why) = refused {
            return Err(Status::resource_exhausted(why));
        }
        self.state_bytes = self.state_bytes - old_size(self) + new_size;
        if has_value {
            self.state.insert(key, cells);
        } else {
            self.state.remove(&key);
        }

        let mut outcomes = Vec::new();
        let mut outgoing = outgoing.into_iter();
        for sent in batch.sent {
            match sent {
                Sent::Message { .. } => {
                    if let Some((envelope, _)) = outgoing.next() {
                        self.pending_bytes += envelope.bytes();
                        self.queue.push_back(envelope);
                    }
                }
                Sent::Delayed { .. } => {
                    if let Some((envelope, Some((delay, token)))) = outgoing.next() {
                        self.pending_bytes += envelope.bytes();
                        let due = self.after(now, delay).unwrap_or(now);
                        self.sequence += 1;
                        let key = (due, self.sequence);
                        if !token.is_empty() {
                            self.tokens.entry(token.clone()).or_default().push(key);
                        }
                        self.delayed.insert(key, Delayed { envelope, token });
                    }
                }
                Sent::Cancel { cancellation_token } => {
                    for key in self.tokens.remove(&cancellation_token).unwrap_or_default() {
                        if let Some(delayed) = self.delayed.remove(&key) {
                            self.pending_bytes =
                                self.pending_bytes.saturating_sub(delayed.envelope.bytes());
                        }
                    }
                }
                Sent::Egress { egress, value } => outcomes.push(Outcome::Egress {
                    line,
                    egress,
                    value,
                }),
            }
        }
        Ok(outcomes)
    }

    /// Drops every expired value (and every address left with none).
    fn sweep_expired(&mut self, now: Instant) {
        let mut bytes = 0;
        self.state.retain(|key, cells| {
            for cell in cells.iter_mut() {
                if cell.as_ref().is_some_and(|s| !s.live(now)) {
                    *cell = None;
                }
            }
            let keep = cells.iter().any(Option::is_some);
            if keep {
                bytes += state_size(key, cells);
            }
            keep
        });
        self.state_bytes = bytes;
    }
}
