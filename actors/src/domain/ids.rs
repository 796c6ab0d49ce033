//! The ids of the Recorder API as types: each is parsed once, at the edge (a request body, a
//! path), and from then on is known to be a valid id (`is_valid_id`: letters, digits and
//! `. _ - : @ + = ~`, never `.` or `..`), so it is a safe file name and object-key component as
//! it is, and one kind of id cannot be passed where another is meant.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::is_valid_id;

/// Why a text is not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must not be empty")]
    Empty,
    #[error("is longer than {max} characters")]
    TooLong { max: usize },
    #[error("may only contain letters, digits and . _ - : @ + = ~")]
    Invalid,
}

/// Checks `value` as an id of at most `max_len` bytes.
pub fn check_id(value: &str, max_len: usize) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty);
    }
    if value.len() > max_len {
        return Err(IdError::TooLong { max: max_len });
    }
    if !is_valid_id(value) {
        return Err(IdError::Invalid);
    }
    Ok(())
}

/// The longest id any configuration allows; the configured `limits.max_id_len` may be lower and
/// is checked where the configuration is known.
pub const MAX_ID_LEN: usize = 1024;

macro_rules! id_type {
    ($($(#[$meta:meta])* $name:ident;)*) => {$(
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// A valid id of at most [`MAX_ID_LEN`] bytes.
            pub fn parse(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check_id(&value, MAX_ID_LEN)?;
                Ok(Self(value))
            }

            /// At most `max_len` bytes (the configured limit).
            pub fn check_len(&self, max_len: usize) -> Result<(), IdError> {
                check_id(&self.0, max_len)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }

        impl PartialEq<$name> for String {
            fn eq(&self, other: &$name) -> bool {
                *self == other.0
            }
        }
    )*};
}

id_type! {
    /// The tenant; always from the caller's API key, never from a request.
    OrganizationId;
    /// Selects the storage profile.
    ApplicationId;
    /// The client's id of a call; may hold several recorder instances over time.
    ConversationId;
    /// The media room whose publishers are recorded.
    ConferenceId;
    /// The recorder node that owns an instance.
    RecorderId;
    /// One recording (one start..stop).
    InstanceId;
    /// A participant.
    UserId;
    /// A co-browse session, or a publisher's media session.
    SessionId;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_once_and_compare_with_text() {
        let id = ConversationId::parse("call-1@org").unwrap();
        assert_eq!(id, *"call-1@org");
        assert_eq!(String::from("call-1@org"), id);
        assert_eq!(id.len(), 10, "derefs to str");
        for (bad, error) in [
            ("", IdError::Empty),
            ("a/b", IdError::Invalid),
            ("..", IdError::Invalid),
            ("é", IdError::Invalid),
        ] {
            assert_eq!(ConversationId::parse(bad), Err(error), "{bad:?}");
        }
        assert_eq!(id.check_len(5), Err(IdError::TooLong { max: 5 }));
        assert_eq!(
            ConversationId::parse("x".repeat(MAX_ID_LEN + 1)),
            Err(IdError::TooLong { max: MAX_ID_LEN })
        );
    }

    #[test]
    fn ids_are_plain_strings_in_json_and_refused_when_invalid() {
        let id: InstanceId = serde_json::from_str("\"i-1\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"i-1\"");
        let err = serde_json::from_str::<InstanceId>("\"a b\"").unwrap_err();
        assert!(err.to_string().contains("may only contain"), "{err}");
    }
}
