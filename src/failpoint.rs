//! Named failpoints for the crash-safety tests: at a named moment the process aborts at once,
//! as if killed, without unwinding or flushing anything.
//!
//! Compiled in only with the `failpoints` feature (the test build); otherwise [`hit`] is an
//! empty function. Which failpoints are armed comes from `FAILPOINTS` (names separated
//! by commas), read when the point is reached.

/// The receiver committed an admitted envelope and its audit entry, and has not answered yet.
pub const RECEIVER_AFTER_COMMIT: &str = "receiver-after-commit";
/// The sender got the receiver's receipt and has not recorded the delivery yet.
pub const SENDER_AFTER_SEND: &str = "sender-after-send";

/// Aborts the process if the failpoint `name` is armed.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    let armed = std::env::var("FAILPOINTS").unwrap_or_default();
    if armed.split(',').any(|armed| armed.trim() == name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

/// Failpoints are compiled out of normal builds.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}
