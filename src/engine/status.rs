//! The error statuses of SPEC §6: every failure of a call, as the gRPC status the caller sees.

use tonic::Status;

use crate::function::FunctionError;
use crate::negotiate::NegotiationError;

/// Unsupported Media Type or Not Acceptable.
pub fn negotiation(e: NegotiationError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// A riff-rpc protocol violation.
pub fn protocol_violation(detail: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("Invoker: Protocol Violation: {detail}"))
}

/// The function failed.
pub fn function(e: FunctionError) -> Status {
    match e {
        FunctionError::Failed(message) => Status::unknown(message),
        FunctionError::BadInput(message) => Status::invalid_argument(message),
        e @ FunctionError::Panicked(_) => Status::internal(e.to_string()),
        e @ FunctionError::Abi(_) => Status::internal(e.to_string()),
        e @ FunctionError::Crashed(_) => Status::unavailable(e.to_string()),
    }
}

/// A message to a streaming function whose output has already ended.
pub fn unread() -> Status {
    Status::failed_precondition(
        "Invoker: the function's output has ended; it takes no more messages: half-close the call",
    )
}

/// The call's deadline had passed when it arrived: nothing ran.
pub fn deadline_exceeded_before_start() -> Status {
    Status::deadline_exceeded("Invoker: the call's deadline had passed when it arrived")
}

/// The call was cancelled before the function started.
pub fn cancelled() -> Status {
    Status::cancelled("Invoker: the call was cancelled before the function started")
}

/// The invoker is draining.
pub fn draining() -> Status {
    Status::unavailable("Invoker: shutting down; retry on another instance")
}

/// The drain's grace period ran out with the call still in flight.
pub fn grace_over() -> Status {
    Status::unavailable(
        "Invoker: shutting down: the call did not finish within the drain grace period",
    )
}

/// The call's deadline (its grpc-timeout) passed.
pub fn deadline_exceeded() -> Status {
    Status::deadline_exceeded("Invoker: the call's deadline passed; the function was stopped")
}
