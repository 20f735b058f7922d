//! [`Payload`]: a job's input, kept as the JSON text it came in.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

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
pub struct Payload {
    text: Box<RawValue>,
    /// Where a tool call's fields lie in `text`, found at its first read
    /// ([`Payload::tool_call_fields`]) and kept, since a tool call is read
    /// at its admission and again at each attempt. 24 bytes, which a
    /// queued job's record has to spare: it stays in the same size of
    /// allocation.
    #[serde(skip)]
    tool_call: OnceLock<Option<ToolCallSpans>>,
}

/// The byte ranges of a tool call's `tool` (or `tool_name`) field and of
/// its `args` field (`u32::MAX` when absent) in a payload's text.
#[derive(Clone, Copy, Debug)]
struct ToolCallSpans {
    tool: [u32; 2],
    args: [u32; 2],
}

impl Payload {
    /// `text`, once checked to be one JSON value.
    ///
    /// # Errors
    ///
    /// When `text` is not JSON.
    pub fn from_text(text: String) -> serde_json::Result<Self> {
        RawValue::from_string(text).map(Self::new)
    }

    fn new(text: Box<RawValue>) -> Self {
        Self {
            text,
            tool_call: OnceLock::new(),
        }
    }

    /// `value` written as JSON text, with no tree built on the way.
    pub(crate) fn of(value: &impl Serialize) -> Self {
        // Writing fails only for a map keyed by something other than
        // strings, which neither a `Value` nor the engine's own payloads
        // hold.
        serde_json::value::to_raw_value(value).map_or_else(|_| Self::default(), Self::new)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.text.get()
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

    /// A tool call's `tool` field (or its alias `tool_name`) and its
    /// `args` field, each as its JSON text; `None` when the payload is not
    /// an object with a tool. Found by one walk over the text, the first
    /// time it is asked; later reads (each attempt of the job) only slice
    /// the text. A text longer than 4 GiB is not read as a tool call.
    pub(crate) fn tool_call_fields(&self) -> Option<(&str, Option<&str>)> {
        let spans = (*self.tool_call.get_or_init(|| self.find_tool_call()))?;
        let text = self.as_str();
        let slice = |[start, end]: [u32; 2]| text.get(start as usize..end as usize);
        let args = if spans.args[0] == u32::MAX {
            None
        } else {
            Some(slice(spans.args)?)
        };
        Some((slice(spans.tool)?, args))
    }

    fn find_tool_call(&self) -> Option<ToolCallSpans> {
        let text = self.as_str();
        // A field's value is a slice of the text: its place is the
        // distance between their starts.
        let span = |value: &str| -> Option<[u32; 2]> {
            let start = value.as_ptr().addr().checked_sub(text.as_ptr().addr())?;
            let start = u32::try_from(start).ok()?;
            Some([start, start.checked_add(u32::try_from(value.len()).ok()?)?])
        };
        let (mut tool, mut alias, mut args) = (None, None, None);
        self.for_each_field(|name, value| match name {
            "tool" => tool = Some(value),
            "tool_name" => alias = Some(value),
            "args" => args = Some(value),
            _ => {}
        })?;
        Some(ToolCallSpans {
            tool: span(tool.or(alias)?)?,
            args: match args {
                Some(args) => span(args)?,
                None => [u32::MAX; 2],
            },
        })
    }

    /// Calls `each` with the payload's top-level fields in order (repeats
    /// too: serde's maps and structs refuse them or keep the first), each
    /// value as its own text; `None` for a payload that is not an object.
    ///
    /// A tool call's payload is read this way once, at its admission
    /// ([`Payload::tool_call_fields`]). The text was checked to be JSON
    /// when the payload was made, so this only finds where each field
    /// begins and ends: a walk over the bytes, with no allocation unless a
    /// key has escapes. Read through serde (a map visitor taking each
    /// value as a `RawValue`), a `calculator` call's 60-byte payload took
    /// about 2,000 instructions a read.
    pub(crate) fn for_each_field<'a>(&'a self, mut each: impl FnMut(&str, &'a str)) -> Option<()> {
        let text = self.as_str();
        let bytes = text.as_bytes();
        let mut at = skip_space(bytes, 0);
        if bytes.get(at) != Some(&b'{') {
            return None;
        }
        at = skip_space(bytes, at + 1);
        if bytes.get(at) == Some(&b'}') {
            return Some(());
        }
        loop {
            if bytes.get(at) != Some(&b'"') {
                return None;
            }
            let (key_end, escaped) = string_end(bytes, at)?;
            let key = unquote(text.get(at..key_end)?, escaped)?;
            at = skip_space(bytes, key_end);
            if bytes.get(at) != Some(&b':') {
                return None;
            }
            at = skip_space(bytes, at + 1);
            let end = value_end(bytes, at)?;
            each(&key, text.get(at..end)?);
            at = skip_space(bytes, end);
            match bytes.get(at) {
                Some(b',') => at = skip_space(bytes, at + 1),
                Some(b'}') => return Some(()),
                _ => return None,
            }
        }
    }
}

/// The first byte at or after `at` that is not JSON whitespace.
fn skip_space(bytes: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = bytes.get(at) {
        at += 1;
    }
    at
}

/// Where the JSON value starting at `at` ends (one past its last byte), in
/// text known to be JSON; `None` past the end of the text.
///
/// Every byte it stops at is ASCII (a quote, a bracket, a comma, a space),
/// which no multi-byte UTF-8 character contains: the text can be sliced
/// there.
fn value_end(bytes: &[u8], at: usize) -> Option<usize> {
    match bytes.get(at)? {
        b'"' => string_end(bytes, at).map(|(end, _)| end),
        b'{' | b'[' => {
            let mut depth = 0_usize;
            let mut i = at;
            while i < bytes.len() {
                match bytes[i] {
                    b'"' => {
                        i = string_end(bytes, i)?.0;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        // A number, `true`, `false` or `null`.
        _ => Some(
            bytes[at..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .map_or(bytes.len(), |len| at + len),
        ),
    }
}

/// Where the JSON string whose opening quote is at `at` ends (one past its
/// closing quote), and whether it has escapes.
fn string_end(bytes: &[u8], at: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    let mut i = at + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => return Some((i + 1, escaped)),
            // Whatever follows a backslash is part of the string.
            b'\\' => {
                escaped = true;
                i += 2;
            }
            _ => i += 1,
        }
    }
    None
}

/// The string the JSON text `text` holds, borrowed unless it has escapes;
/// `None` when it is not a string.
pub(crate) fn string_of(text: &str) -> Option<Cow<'_, str>> {
    if !text.starts_with('"') {
        return None;
    }
    match string_end(text.as_bytes(), 0)? {
        (end, escaped) if end == text.len() => unquote(text, escaped),
        _ => None,
    }
}

/// The string a JSON string's text (quotes included) holds: what lies
/// between its quotes when it has no escapes, read through serde when it
/// has.
fn unquote(text: &str, escaped: bool) -> Option<Cow<'_, str>> {
    if escaped {
        serde_json::from_str::<String>(text).ok().map(Cow::Owned)
    } else {
        text.get(1..text.len().saturating_sub(1)).map(Cow::Borrowed)
    }
}

/// `null`: the payload of a job submitted without one.
impl Default for Payload {
    fn default() -> Self {
        Self::new(RawValue::NULL.to_owned())
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

    /// The fields as serde reads them: each key, and each value as a
    /// `RawValue`.
    fn fields_through_serde(text: &str) -> Option<Vec<(String, String)>> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = Vec<(String, String)>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value: &RawValue = map.next_value()?;
                    fields.push((key, value.get().to_owned()));
                }
                Ok(fields)
            }
        }
        let mut deserializer = serde_json::Deserializer::from_str(text);
        serde::Deserializer::deserialize_map(&mut deserializer, Fields).ok()
    }

    #[test]
    fn fields_are_found_as_serde_finds_them() {
        let nested = json!({
            "tool": "calculator",
            "args": {"op": "add", "a": 2, "b": -2.5e3, "s": "x\"}{[,\\", "t": [true, false, null, [], {}]},
            "quote\"key": "é ünïcode ✓",
            "esc\\aped": "\u{e9}\n",
            "": [1, {"a": [2, {"b": "]"}]}],
            "n": null,
        });
        let mut texts = vec![
            "{}".to_owned(),
            " { } ".to_owned(),
            r#"{"a":1,"a":2}"#.to_owned(),
            "{\n\t\"a\" :\r\n 1 ,\"b\":\"2\" }\n".to_owned(),
            r#"{"t\u0061g": "x", "n": {"deep": [1]}, "n": 2}"#.to_owned(),
            r#"{"x": "\\", "y": "\\\"", "z": 0}"#.to_owned(),
            "[1, 2]".to_owned(),
            "\"text\"".to_owned(),
            "null".to_owned(),
            "3".to_owned(),
            serde_json::to_string(&nested).unwrap(),
            serde_json::to_string_pretty(&nested).unwrap(),
        ];
        texts.push(format!(r#"{{"tool": "calculator", "args": {}}}"#, nested));
        for text in texts {
            let payload = Payload::from_text(text.clone()).unwrap();
            let mut fields = Vec::new();
            let found = payload
                .for_each_field(|key, value| fields.push((key.to_owned(), value.to_owned())));
            assert_eq!(
                found.map(|()| fields),
                fields_through_serde(&text),
                "{text}"
            );
        }
    }

    /// A tool call's fields, found once and kept, are the ones `field`
    /// finds by a walk of its own, at every read and in every clone.
    #[test]
    fn a_tool_calls_fields_are_kept_as_first_found() {
        for text in [
            r#"{"tool": "calculator", "args": {"op": "add", "a": 2, "b": 2}}"#,
            r#"{"args": [1, "}"], "tool_name": "t\u0061g@1.0"}"#,
            r#"{"tool": "a", "tool": "b", "args": 1, "args": null}"#,
            r#"{"tool_name": "alias", "tool": "wins"}"#,
            "{\n  \"tool\" : \"é\" ,\n  \"other\": {\"args\": 1}\n}",
            r#"{"args": {}}"#,
            r#"{"tool": 3, "args": {}}"#,
            r#"["tool", "args"]"#,
            "null",
        ] {
            let payload = Payload::from_text(text.to_owned()).unwrap();
            let expected = payload
                .field("tool")
                .or_else(|| payload.field("tool_name"))
                .map(|tool| (tool, payload.field("args")));
            assert_eq!(payload.tool_call_fields(), expected, "{text}");
            assert_eq!(payload.tool_call_fields(), expected, "{text}, read again");
            let clone = payload.clone();
            assert_eq!(clone.tool_call_fields(), expected, "{text}, cloned");
        }
    }

    #[test]
    fn strings_are_read_as_serde_reads_them() {
        for text in [
            r#""plain""#,
            r#""""#,
            r#""a\"b""#,
            r#""\\""#,
            r#""\u00e9""#,
            r#""é""#,
            "1",
            "null",
            "[\"a\"]",
            r#"{"a": "b"}"#,
        ] {
            let through_serde = serde_json::from_str::<String>(text).ok();
            assert_eq!(
                string_of(text).map(Cow::into_owned),
                through_serde,
                "{text}"
            );
        }
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
