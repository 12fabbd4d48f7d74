//! How a typed payload maps onto a task's stored `args` and `kwargs`, and back.
//!
//! A payload that serializes to a JSON object is stored as `kwargs`; anything
//! else is stored as the single positional argument. A handler receives the
//! reverse: one positional argument and no keywords gives that argument, keywords
//! alone give the object, and any other shape (several positional arguments, as
//! a task enqueued from another language might carry) gives the array of them,
//! which deserializes into a tuple or a `Vec`.

use serde_json::{Map, Value};

/// Splits a serialized payload into `(args, kwargs)`.
pub fn split(payload: Value) -> (Vec<Value>, Map<String, Value>) {
    match payload {
        Value::Object(kwargs) => (Vec::new(), kwargs),
        other => (vec![other], Map::new()),
    }
}

/// Joins stored `args` and `kwargs` into the value a typed handler deserializes.
pub fn join(args: &[Value], kwargs: &Map<String, Value>) -> Value {
    match (args, kwargs.is_empty()) {
        ([single], true) => single.clone(),
        ([], _) => Value::Object(kwargs.clone()),
        (many, true) => Value::Array(many.to_vec()),
        (many, false) => {
            // Both kinds of arguments: give the handler everything, keyed so a
            // struct with `args` and `kwargs` fields can take it.
            let mut both = Map::new();
            both.insert("args".into(), Value::Array(many.to_vec()));
            both.insert("kwargs".into(), Value::Object(kwargs.clone()));
            Value::Object(both)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn typed_payloads_round_trip() {
        for payload in [
            json!({"to": "a@b.c"}),
            json!(5),
            json!([5]),
            json!(null),
            json!("x"),
            json!({}),
            json!([1, [2]]),
        ] {
            let (args, kwargs) = split(payload.clone());
            assert_eq!(join(&args, &kwargs), payload);
        }
    }

    #[test]
    fn raw_arguments_join_into_an_array() {
        assert_eq!(join(&[json!(1), json!(2)], &Map::new()), json!([1, 2]));
    }
}
