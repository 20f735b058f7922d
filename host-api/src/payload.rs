//! [`Payload`]: a job's input, kept as the JSON text it came in.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A job's kind-specific input, kept as the JSON text it came in.
///
/// The engine itself never looks inside a payload; the job's backend reads
/// it when the job is admitted and when it runs. Kept as text, a payload
/// is one allocation where a parsed [`serde_json::Value`] is a tree of
/// them: a queued job is smaller, and a job's payload costs nothing to
/// store, send or hand to a sandbox (a tool's arguments go in as text),
/// where walking a tree that has gone cold in the cache since admission
/// cost a tool call about as much as the scheduler's bookkeeping. It also
/// gives back exactly what the caller sent: its key order, and numbers
/// to their last digit.
///
/// ```
/// use serde_json::json;
/// use work_host_api::Payload;
///
/// let payload = Payload::from_text(r#"{"steps": 3, "id": 12345678901234567890123}"#.into())?;
/// assert_eq!(payload.as_str(), r#"{"steps": 3, "id": 12345678901234567890123}"#);
///
/// #[derive(serde::Deserialize)]
/// struct Training { steps: u32 }
/// assert_eq!(payload.parse::<Training>()?.steps, 3);
///
/// assert_eq!(Payload::from(json!({"a": 1})), json!({"a": 1}));
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Payload(Box<RawValue>);

impl Payload {
    /// `text`, once checked to be one JSON value.
    ///
    /// # Errors
    ///
    /// When `text` is not JSON.
    pub fn from_text(text: String) -> serde_json::Result<Self> {
        RawValue::from_string(text).map(Self)
    }

    /// `value` written as JSON text, with no tree built on the way.
    pub(crate) fn of(value: &impl Serialize) -> Self {
        // Writing fails only for a map keyed by something other than
        // strings, which neither a `Value` nor the engine's own payloads
        // hold.
        serde_json::value::to_raw_value(value).map_or_else(|_| Self::default(), Self)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// Reads the payload as a `T`, borrowing from its text where `T` does.
    ///
    /// # Errors
    ///
    /// When the payload does not have `T`'s shape.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> serde_json::Result<T> {
        serde_json::from_str(self.as_str())
    }

    /// The JSON text of the payload's top-level field `name` (the last,
    /// if the object repeats it, as a parsed object would keep); `None`
    /// when it is absent or the payload is not an object.
    ///
    /// ```
    /// let payload = work_host_api::Payload::from_text(r#"{"mock": {"delay_ms": 5}}"#.into())?;
    /// assert_eq!(payload.field("mock"), Some(r#"{"delay_ms": 5}"#));
    /// assert_eq!(payload.field("other"), None);
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn field(&self, name: &str) -> Option<&str> {
        let mut found = None;
        self.for_each_field(|key, value| {
            if key == name {
                found = Some(value);
            }
        })?;
        found
    }

    /// Calls `each` with the payload's top-level fields in order (repeats
    /// too: serde's maps and structs refuse them or keep the first), each
    /// value as its own text; `None` for a payload that is not an object.
    ///
    /// One pass over the text and no allocation unless a key has escapes:
    /// a tool call's payload is read this way at admission and again at
    /// each attempt.
    pub(crate) fn for_each_field<'a>(&'a self, each: impl FnMut(&str, &'a str)) -> Option<()> {
        // Anything but an object is refused by `deserialize_map`.
        let mut deserializer = serde_json::Deserializer::from_str(self.as_str());
        serde::Deserializer::deserialize_map(&mut deserializer, EachField(each)).ok()
    }
}

/// Visits an object's fields, handing each to the closure.
struct EachField<F>(F);

impl<'de, F: FnMut(&str, &'de str)> serde::de::Visitor<'de> for EachField<F> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
            let value: &'de RawValue = map.next_value()?;
            (self.0)(&key, value.get());
        }
        Ok(())
    }
}

/// A JSON string (an object's key, or a field's value), borrowed from the
/// text unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(key)))
            }

            fn visit_str<E>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key.to_owned())))
            }
        }
        deserializer.deserialize_str(Visit)
    }
}

/// The string the JSON text `text` holds, borrowed unless it has escapes;
/// `None` when it is not a string.
pub(crate) fn string_of(text: &str) -> Option<Cow<'_, str>> {
    serde_json::from_str::<Key<'_>>(text)
        .ok()
        .map(|Key(text)| text)
}

/// `null`: the payload of a job submitted without one.
impl Default for Payload {
    fn default() -> Self {
        Self(RawValue::NULL.to_owned())
    }
}

impl From<serde_json::Value> for Payload {
    fn from(value: serde_json::Value) -> Self {
        Self::from(&value)
    }
}

impl From<&serde_json::Value> for Payload {
    fn from(value: &serde_json::Value) -> Self {
        Self::of(value)
    }
}

/// Equal when they hold the same JSON value, however it is spelled.
impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
            || self
                .parse::<serde_json::Value>()
                .is_ok_and(|value| other == &value)
    }
}

/// Equal when the payload holds `value`.
impl PartialEq<serde_json::Value> for Payload {
    fn eq(&self, value: &serde_json::Value) -> bool {
        self.parse::<serde_json::Value>()
            .is_ok_and(|parsed| parsed == *value)
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Payload({})", self.as_str())
    }
}

impl fmt::Display for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_is_kept_as_sent() {
        let text = r#"{ "b": 1, "a": 1.00000000000000000001 }"#;
        let payload = Payload::from_text(text.into()).unwrap();
        assert_eq!(payload.as_str(), text);
        assert_eq!(serde_json::to_string(&payload).unwrap(), text);
        assert!(Payload::from_text("{".into()).is_err());
        assert!(Payload::from_text("1 2".into()).is_err());
    }

    #[test]
    fn equal_by_value() {
        let spaced = Payload::from_text(r#"{ "a": 1, "b": [true] }"#.into()).unwrap();
        assert_eq!(spaced, Payload::from(json!({"b": [true], "a": 1})));
        assert_eq!(spaced, json!({"a": 1, "b": [true]}));
        assert_ne!(spaced, json!({"a": 2, "b": [true]}));
        assert_eq!(Payload::default(), json!(null));
    }

    #[test]
    fn fields_in_order_with_escapes_and_duplicates() {
        let payload =
            Payload::from_text(r#"{"t\u0061g": "x", "n": {"deep": [1]}, "n": 2}"#.into()).unwrap();
        let mut fields = Vec::new();
        payload
            .for_each_field(|name, value| fields.push((name.to_owned(), value)))
            .unwrap();
        let names: Vec<&str> = fields.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["tag", "n", "n"]);
        assert_eq!(fields[1].1, r#"{"deep": [1]}"#);
        assert_eq!(string_of(fields[0].1).as_deref(), Some("x"));
        assert_eq!(string_of(fields[2].1), None);
        assert_eq!(string_of(r#""a\"b""#).as_deref(), Some("a\"b"));
        assert_eq!(payload.field("n"), Some("2"));
        assert_eq!(payload.field("tag"), Some("\"x\""));
        for not_an_object in ["[1, 2]", "\"text\"", "null", "3"] {
            let payload = Payload::from_text(not_an_object.into()).unwrap();
            assert!(
                payload.for_each_field(|_, _| ()).is_none(),
                "{not_an_object}"
            );
            assert!(payload.field("tool").is_none(), "{not_an_object}");
        }
    }
}
