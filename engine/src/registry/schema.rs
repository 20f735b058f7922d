//! Parameter schemas: normalising what tools declare and validating
//! arguments against it.

use crate::error::Violation;
use jsonschema::Validator;
use serde_json::{Map, Value};

/// Why a declared schema is unusable.
pub(crate) type SchemaError = String;

/// Lower-cases ADM/Gemini-style type names (`"OBJECT"`, `"STRING"` …) and
/// turns Gemini's `"nullable": true` into a `"null"` type, recursively
/// through every keyword that holds a subschema. Values of `enum`, `const`,
/// `default` and `examples` are data and are left alone.
pub(crate) fn normalise(schema: &mut Value) {
    let Value::Object(object) = schema else {
        return;
    };
    normalise_type(object);
    for (key, value) in object.iter_mut() {
        match key.as_str() {
            "properties" | "patternProperties" | "$defs" | "definitions" | "dependentSchemas" => {
                if let Value::Object(map) = value {
                    map.values_mut().for_each(normalise);
                }
            }
            "items" | "prefixItems" | "anyOf" | "oneOf" | "allOf" => match value {
                Value::Array(list) => list.iter_mut().for_each(normalise),
                other => normalise(other),
            },
            "additionalProperties"
            | "not"
            | "if"
            | "then"
            | "else"
            | "contains"
            | "propertyNames"
            | "unevaluatedProperties"
            | "unevaluatedItems"
            | "additionalItems" => normalise(value),
            _ => {}
        }
    }
}

fn normalise_type(object: &mut Map<String, Value>) {
    const NAMES: [&str; 7] = [
        "object", "string", "number", "integer", "boolean", "array", "null",
    ];
    let lower = |value: &mut Value| {
        if let Value::String(name) = value {
            let lowered = name.to_ascii_lowercase();
            if NAMES.contains(&lowered.as_str()) {
                *name = lowered;
            }
        }
    };
    match object.get_mut("type") {
        Some(Value::Array(list)) => list.iter_mut().for_each(lower),
        Some(value) => lower(value),
        None => {}
    }
    if object.get("nullable") == Some(&Value::Bool(true)) {
        object.remove("nullable");
        if let Some(Value::String(single)) = object.get("type").cloned() {
            object.insert(
                "type".into(),
                Value::Array(vec![Value::String(single), Value::String("null".into())]),
            );
        }
    }
}

/// JSON Schema versions a tool may name in `$schema`; others are refused
/// rather than fetched.
const KNOWN_DRAFTS: [&str; 6] = [
    "https://json-schema.org/draft/2020-12/schema",
    "https://json-schema.org/draft/2019-09/schema",
    "http://json-schema.org/draft-07/schema",
    "http://json-schema.org/draft-06/schema",
    "http://json-schema.org/draft-04/schema",
    "http://json-schema.org/schema",
];

/// Compiles a (normalised) schema into a validator, checking it against
/// its meta-schema. Draft 2020-12 unless `$schema` names another.
pub(crate) fn compile(schema: &Value) -> Result<Validator, SchemaError> {
    if !schema.is_object() && !schema.is_boolean() {
        return Err("a schema must be a JSON object".into());
    }
    if let Some(uri) = schema.get("$schema") {
        let known = uri
            .as_str()
            .map(|uri| uri.trim_end_matches('#'))
            .is_some_and(|uri| KNOWN_DRAFTS.contains(&uri));
        if !known {
            return Err(format!("unsupported $schema {uri}"));
        }
    }
    // The schema comes from an untrusted guest; a panic inside the
    // validator's compiler must not take the engine down with it.
    let built = std::panic::catch_unwind(|| {
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(schema)
    });
    match built {
        Ok(Ok(validator)) => Ok(validator),
        Ok(Err(err)) => Err(err.to_string()),
        Err(_) => Err("the schema could not be compiled".into()),
    }
}

/// A schema as a tool declares it (JSON text): parsed, normalised and
/// checked to compile.
pub(crate) fn declared(text: &str) -> Result<Value, SchemaError> {
    let mut schema: Value = serde_json::from_str(text).map_err(|err| format!("not JSON: {err}"))?;
    normalise(&mut schema);
    compile(&schema)?;
    Ok(schema)
}

/// Checks that a tool's parameter schema describes an object, the only
/// argument shape function-calling formats allow.
pub(crate) fn check_parameters(schema: &Value) -> Result<(), SchemaError> {
    match schema.get("type") {
        Some(Value::String(kind)) if kind == "object" => Ok(()),
        Some(other) => Err(format!(
            "parameters must have \"type\": \"object\", not {other}"
        )),
        None => Err("parameters must have \"type\": \"object\"".into()),
    }
}

/// Every way `args` misses the schema, each with its JSON pointer.
pub(crate) fn violations(validator: &Validator, args: &Value) -> Vec<Violation> {
    // The common case first: `is_valid` stops at nothing and allocates
    // nothing, where collecting errors sets up an iterator for each keyword.
    if validator.is_valid(args) {
        return Vec::new();
    }
    validator
        .iter_errors(args)
        .map(|err| Violation {
            path: err.instance_path().to_string(),
            message: err.to_string(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn gemini_style_schema_is_normalised() {
        let mut schema = json!({
            "type": "OBJECT",
            "properties": {
                "city": {"type": "STRING", "enum": ["STRING", "Paris"]},
                "days": {"type": "INTEGER", "nullable": true},
                "tags": {"type": "ARRAY", "items": {"type": "STRING"}}
            },
            "required": ["city"]
        });
        normalise(&mut schema);
        assert_eq!(
            schema,
            json!({
                "type": "object",
                "properties": {
                    "city": {"type": "string", "enum": ["STRING", "Paris"]},
                    "days": {"type": ["integer", "null"]},
                    "tags": {"type": "array", "items": {"type": "string"}}
                },
                "required": ["city"]
            })
        );
        assert!(compile(&schema).is_ok());
    }

    #[test]
    fn declared_schemas_are_parsed_normalised_and_compiled() {
        let schema =
            declared(r#"{"type": "OBJECT", "properties": {"q": {"type": "STRING"}}}"#).unwrap();
        assert_eq!(schema["properties"]["q"]["type"], "string");
        assert!(check_parameters(&schema).is_ok());
        assert!(declared("{not json").unwrap_err().starts_with("not JSON"));
        assert!(declared(r#"{"type": "OBJECT", "minProperties": "two"}"#).is_err());
    }

    #[test]
    fn violations_carry_json_paths() {
        let validator = compile(&json!({
            "type": "object",
            "properties": {"a": {"type": "number"}, "op": {"enum": ["add"]}},
            "required": ["a", "b"]
        }))
        .unwrap();
        let found = violations(&validator, &json!({"a": "x", "op": "pow"}));
        let paths: Vec<&str> = found.iter().map(|v| v.path.as_str()).collect();
        assert!(paths.contains(&"/a"), "{found:?}");
        assert!(paths.contains(&"/op"), "{found:?}");
        assert!(paths.contains(&""), "{found:?}");
        assert_eq!(found.len(), 3, "{found:?}");
    }

    #[test]
    fn unusable_schemas_are_refused_not_fatal() {
        assert!(compile(&json!({"type": "no-such-type"})).is_err());
        assert!(compile(&json!({"$schema": "https://evil.example/schema"})).is_err());
        assert!(compile(&json!("string")).is_err());
        assert!(check_parameters(&json!({"type": "string"})).is_err());
        assert!(check_parameters(&json!({"type": "object"})).is_ok());
    }
}
