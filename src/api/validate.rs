//! Parses raw request JSON into checked values at the edge. Every failure is a 400 that names
//! the field the way a client wrote it (`event.sequenceId`, `chatTranscriptList[2].timeStamp`).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::error::ApiError;

/// Ids end up in object keys and URL paths: letters, digits and `. _ - : @ + = ~`, never `.` or
/// `..` alone.
pub use recorder_actors::domain::is_valid_id;

pub fn check_id(field: &str, value: &str, max_len: usize) -> Result<(), ApiError> {
    if value.is_empty() {
        return Err(ApiError::bad_field(field, "must not be empty"));
    }
    if value.len() > max_len {
        return Err(ApiError::bad_field(
            field,
            format!("is longer than {max_len} characters"),
        ));
    }
    if !is_valid_id(value) {
        return Err(ApiError::bad_field(
            field,
            "may only contain letters, digits and . _ - : @ + = ~",
        ));
    }
    Ok(())
}

/// Parses a request body as JSON, naming where it broke.
pub fn parse_body(bytes: &[u8]) -> Result<Value, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad_field("body", "a JSON object is required"));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_field("body", format!("invalid JSON: {e}")))
}

/// A JSON object being read, with the path of field names that led to it.
#[derive(Debug)]
pub struct Obj<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'a> Obj<'a> {
    pub fn root(value: &'a Value) -> Result<Self, ApiError> {
        match value {
            Value::Object(map) => Ok(Self {
                map,
                path: String::new(),
            }),
            other => Err(ApiError::bad_field(
                "body",
                format!("must be a JSON object, not {}", type_name(other)),
            )),
        }
    }

    pub fn field(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// The value of a field; JSON `null` counts as absent.
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    fn required(&self, name: &str) -> Result<&'a Value, ApiError> {
        self.get(name)
            .ok_or_else(|| ApiError::bad_field(&self.field(name), "is required"))
    }

    pub fn req_str(&self, name: &str, max_len: usize) -> Result<String, ApiError> {
        match self.required(name)? {
            Value::String(s) if s.len() > max_len => Err(ApiError::bad_field(
                &self.field(name),
                format!("is longer than {max_len} bytes"),
            )),
            Value::String(s) => Ok(s.clone()),
            other => Err(ApiError::bad_field(
                &self.field(name),
                format!("must be a string, not {}", type_name(other)),
            )),
        }
    }

    pub fn opt_str(&self, name: &str, max_len: usize) -> Result<Option<String>, ApiError> {
        if self.get(name).is_none() {
            return Ok(None);
        }
        self.req_str(name, max_len).map(Some)
    }

    pub fn req_id(&self, name: &str, max_len: usize) -> Result<String, ApiError> {
        let value = self.req_str(name, max_len)?;
        check_id(&self.field(name), &value, max_len)?;
        Ok(value)
    }

    pub fn opt_bool(&self, name: &str, default: bool) -> Result<bool, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(other) => Err(ApiError::bad_field(
                &self.field(name),
                format!("must be true or false, not {}", type_name(other)),
            )),
        }
    }

    pub fn req_i64(&self, name: &str) -> Result<i64, ApiError> {
        match self.required(name)? {
            Value::Number(n) => n.as_i64().ok_or_else(|| {
                ApiError::bad_field(
                    &self.field(name),
                    format!("must be an integer in the int64 range, not {n}"),
                )
            }),
            other => Err(ApiError::bad_field(
                &self.field(name),
                format!("must be an integer, not {}", type_name(other)),
            )),
        }
    }

    pub fn req_i32(&self, name: &str) -> Result<i32, ApiError> {
        let value = match self.required(name)? {
            Value::Number(n) => n.as_i64().and_then(|v| i32::try_from(v).ok()),
            other => {
                return Err(ApiError::bad_field(
                    &self.field(name),
                    format!("must be an integer, not {}", type_name(other)),
                ));
            }
        };
        value.ok_or_else(|| ApiError::bad_field(&self.field(name), "must be an integer in the int32 range"))
    }

    pub fn req_datetime(&self, name: &str) -> Result<DateTime<Utc>, ApiError> {
        let text = self.req_str(name, 64)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                ApiError::bad_field(
                    &self.field(name),
                    format!("{text:?} is not an RFC 3339 date-time ({e})"),
                )
            })
    }

    pub fn req_obj(&self, name: &str) -> Result<Obj<'a>, ApiError> {
        match self.required(name)? {
            Value::Object(map) => Ok(Obj {
                map,
                path: self.field(name),
            }),
            other => Err(ApiError::bad_field(
                &self.field(name),
                format!("must be an object, not {}", type_name(other)),
            )),
        }
    }

    /// The objects of an array field, each with its indexed path.
    pub fn req_obj_array(&self, name: &str, max_items: usize) -> Result<Vec<Obj<'a>>, ApiError> {
        let items = match self.required(name)? {
            Value::Array(items) => items,
            other => {
                return Err(ApiError::bad_field(
                    &self.field(name),
                    format!("must be an array, not {}", type_name(other)),
                ));
            }
        };
        if items.is_empty() {
            return Err(ApiError::bad_field(&self.field(name), "must not be empty"));
        }
        if items.len() > max_items {
            return Err(ApiError::bad_field(
                &self.field(name),
                format!("holds more than {max_items} items"),
            ));
        }
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let path = format!("{}[{i}]", self.field(name));
                match item {
                    Value::Object(map) => Ok(Obj { map, path }),
                    other => Err(ApiError::bad_field(
                        &path,
                        format!("must be an object, not {}", type_name(other)),
                    )),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field_of(err: ApiError) -> String {
        match err {
            ApiError::BadRequest { field, .. } => field,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn ids_are_plain() {
        for good in ["abc", "6e6d5224-1919-48fa-a982-66cef9fa4c08", "user@org", "a.b_c:d"] {
            assert!(is_valid_id(good), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "a\\b", "a%2F", "é", "a\0"] {
            assert!(!is_valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn errors_name_nested_fields() {
        let body = json!({"event": {"sequenceId": 2147483648i64, "timestamp": 1.5}, "list": [{"t": "x"}, 3]});
        let obj = Obj::root(&body).unwrap();
        let event = obj.req_obj("event").unwrap();
        assert_eq!(field_of(event.req_i32("sequenceId").unwrap_err()), "event.sequenceId");
        assert_eq!(field_of(event.req_i64("timestamp").unwrap_err()), "event.timestamp");
        assert_eq!(field_of(event.req_str("payload", 10).unwrap_err()), "event.payload");
        assert_eq!(field_of(obj.req_obj_array("list", 10).unwrap_err()), "list[1]");
        assert_eq!(field_of(obj.req_obj_array("list", 1).unwrap_err()), "list");
    }

    #[test]
    fn values_are_checked_by_type_and_range() {
        let body =
            json!({"a": "yes", "n": null, "t": "2019-08-24T14:15:22Z", "bad_t": "yesterday", "big": 1e300, "i": -5});
        let obj = Obj::root(&body).unwrap();
        assert_eq!(field_of(obj.opt_bool("a", true).unwrap_err()), "a");
        assert!(obj.opt_bool("n", true).unwrap(), "null is absent");
        assert_eq!(obj.req_datetime("t").unwrap().to_rfc3339(), "2019-08-24T14:15:22+00:00");
        assert_eq!(field_of(obj.req_datetime("bad_t").unwrap_err()), "bad_t");
        assert_eq!(field_of(obj.req_i64("big").unwrap_err()), "big");
        assert_eq!(obj.req_i32("i").unwrap(), -5);
        assert_eq!(field_of(obj.req_id("n", 10).unwrap_err()), "n");
        assert!(Obj::root(&json!([1])).is_err());
        assert_eq!(field_of(parse_body(b"{\"a\":").unwrap_err()), "body");
    }
}
