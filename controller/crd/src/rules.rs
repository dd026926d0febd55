//! Admission rules shared by the types: refusing what Kiln does not support with a message
//! that names the field, and the opaque schemas of those fields (accepted by the schema so
//! that the rule, not a generic "unknown field", explains the refusal).

use kube::core::{Message, Reason, Rule};
use schemars::{json_schema, Schema, SchemaGenerator};

/// Refuses field `field` of this object: "Kiln does not support ...". The error names the
/// field (its path) and says why or what to do instead.
pub fn refuse(field: &str, why: &str) -> Rule {
    Rule::new(format!("!has(self.{field})"))
        .message(Message::Message(format!("Kiln does not support {why}")))
        .field_path(format!(".{field}"))
        .reason(Reason::FieldValueForbidden)
}

/// Refuses boolean `field` when it is set to true (false is what Kiln does anyway).
pub fn refuse_true(field: &str, why: &str) -> Rule {
    Rule::new(format!("!has(self.{field}) || !self.{field}"))
        .message(Message::Message(format!("Kiln does not support {why}")))
        .field_path(format!(".{field}"))
        .reason(Reason::FieldValueForbidden)
}

/// A rule with a plain message.
pub fn rule(expr: &str, message: &str) -> Rule {
    Rule::new(expr).message(Message::Message(message.to_string()))
}

/// A rule whose message is a CEL expression (it can name the offending item).
pub fn rule_expr(expr: &str, message_expr: &str) -> Rule {
    Rule::new(expr).message(Message::Expression(message_expr.to_string()))
}

/// Schema of a KubeVirt object field Kiln refuses: any object.
pub fn any_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Schema of a KubeVirt list field Kiln refuses: a list of any objects.
pub fn any_object_list(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
    })
}
