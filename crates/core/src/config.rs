//! The error a builder returns: a configuration that cannot work, refused before any call.

use std::borrow::Cow;
use std::fmt;

/// A configuration refused by a builder's `build()`: a value out of range, a missing
/// part, an API key that cannot be a header.
///
/// It is apart from [`LlmError`](crate::LlmError), the error of a call: a stack that was
/// built never fails a call for its configuration, and a caller matching on a call's
/// [`ErrorKind`](crate::ErrorKind) never has a configuration case to handle.
///
/// ```
/// use llm_layers_core::ConfigError;
/// let e = ConfigError::new("window must be at least 2 ms");
/// assert_eq!(e.to_string(), "invalid configuration: window must be at least 2 ms");
/// assert_eq!(e.message(), "window must be at least 2 ms");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    message: Cow<'static, str>,
}

impl ConfigError {
    /// A configuration error saying what is wrong.
    pub fn new(message: impl Into<Cow<'static, str>>) -> ConfigError {
        ConfigError {
            message: message.into(),
        }
    }

    /// What is wrong, without the `invalid configuration:` prefix.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration: {}", self.message)
    }
}

impl std::error::Error for ConfigError {}
