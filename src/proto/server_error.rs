//! ErrorResponse and NoticeResponse bodies as a typed value.

use std::fmt;

use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::ErrorFields;

use super::ProtocolError;

/// What the server reported in an ErrorResponse or NoticeResponse. Messages are translated per
/// the server's `lc_messages`, so callers classify by [`ServerError::code`] (SQLSTATE).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerError {
    /// Non-localized severity (`V`, 9.6+), falling back to the localized one (`S`).
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl ServerError {
    pub(crate) fn parse(mut fields: ErrorFields<'_>) -> Result<Self, ProtocolError> {
        let mut error = ServerError::default();
        let mut localized_severity = String::new();
        while let Some(field) = fields
            .next()
            .map_err(|e| ProtocolError::malformed("ErrorResponse", e.to_string()))?
        {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                b'S' => localized_severity = value,
                b'V' => error.severity = value,
                b'C' => error.code = value,
                b'M' => error.message = value,
                b'D' => error.detail = Some(value),
                b'H' => error.hint = Some(value),
                _ => {}
            }
        }
        if error.severity.is_empty() {
            error.severity = localized_severity;
        }
        Ok(error)
    }

    /// FATAL and PANIC end the session; ERROR ends only the command.
    pub fn is_fatal(&self) -> bool {
        matches!(self.severity.as_str(), "FATAL" | "PANIC")
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.severity, self.message)?;
        if !self.code.is_empty() {
            write!(f, " (SQLSTATE {})", self.code)?;
        }
        if let Some(detail) = &self.detail {
            write!(f, "; detail: {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "; hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ServerError {}
