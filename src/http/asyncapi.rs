//! `/asyncapi.json`: the AsyncAPI 3 document of the WebSocket protocol (`/v1/ws`), built from
//! the frame types themselves: client frames from [`RequestKind`] and the fields each one
//! parses into, server frames from [`ServerFrame`]'s schema. A frame the server parses or
//! sends therefore has its schema here, and the schema is the type's.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};
use utoipa::{PartialSchema, ToSchema};

use crate::protocol::{AnyRequestId, Components, HistoryQuery, RequestKind, ServerFrame};

const CHANNEL: &str = "#/channels/ws";

/// The key of a client frame's message in the channel.
pub fn client_message(kind: &str) -> String {
    format!("client.{kind}")
}

/// The key of a server frame's message in the channel.
pub fn server_message(kind: &str) -> String {
    format!("server.{kind}")
}

fn message_ref(key: &str) -> Value {
    json!({ "$ref": format!("{CHANNEL}/messages/{key}") })
}

fn to_json(schema: impl serde::Serialize) -> Value {
    // utoipa's schemas are plain data; encoding them cannot fail.
    serde_json::to_value(schema).unwrap_or(Value::Null)
}

/// A client frame's payload: its fields' schema, plus `type` and `id`.
fn client_payload(kind: RequestKind, components: &mut Components) -> Value {
    let mut payload = to_json(kind.fields_schema(components));
    let Value::Object(object) = &mut payload else {
        return payload;
    };
    object.insert("type".into(), json!("object"));
    let properties = object
        .entry("properties")
        .or_insert_with(|| json!({}))
        .as_object_mut();
    let mut cursors = Vec::new();
    if let Some(properties) = properties {
        properties.insert(
            "type".into(),
            json!({ "type": "string", "const": kind.name() }),
        );
        properties.insert(
            "id".into(),
            json!({ "$ref": format!("#/components/schemas/{}", AnyRequestId::name()) }),
        );
        cursors = HistoryQuery::CURSORS
            .into_iter()
            .filter(|cursor| properties.contains_key(*cursor))
            .collect();
    }
    let required = object.entry("required").or_insert_with(|| json!([]));
    if let Some(required) = required.as_array_mut() {
        required.insert(0, json!("type"));
    }
    if cursors.len() > 1 {
        object.insert("not".into(), HistoryQuery::two_cursors());
    }
    payload
}

fn message(name: &str, title: String, summary: &str, payload: Value) -> Value {
    json!({
        "name": name,
        "title": title,
        "summary": summary,
        "contentType": "application/json",
        "payload": payload,
    })
}

/// The document, with `host` (where the client reached this server) as its server.
pub fn document(host: &str) -> Value {
    let mut components: Components =
        vec![(AnyRequestId::name().into_owned(), AnyRequestId::schema())];
    let mut messages = Map::new();
    let mut operations = Map::new();

    // Server frames: the variants of `ServerFrame`'s schema, each an object whose `type`
    // names it. Replies have an `id`; pushes do not.
    <ServerFrame as ToSchema>::schemas(&mut components);
    let server = to_json(<ServerFrame as PartialSchema>::schema());
    let mut pushes = Vec::new();
    let variants = server["oneOf"].as_array().cloned().unwrap_or_default();
    for variant in variants {
        let Some(name) = variant["properties"]["type"]["enum"][0]
            .as_str()
            .map(str::to_owned)
        else {
            continue;
        };
        let key = server_message(&name);
        let is_reply = variant["properties"].get("id").is_some();
        if !is_reply {
            pushes.push(message_ref(&key));
        }
        let summary = variant["description"].as_str().unwrap_or(&name).to_owned();
        let title = format!("{name} ({})", if is_reply { "reply" } else { "push" });
        messages.insert(key, message(&name, title, &summary, variant));
    }

    // Client frames: one operation each, answered by its replies or `error`.
    for &kind in RequestKind::ALL {
        let key = client_message(kind.name());
        let payload = client_payload(kind, &mut components);
        messages.insert(
            key.clone(),
            message(
                kind.name(),
                format!("{} (request)", kind.name()),
                kind.summary(),
                payload,
            ),
        );
        let replies: Vec<Value> = kind
            .replies()
            .iter()
            .chain(&["error"])
            .map(|reply| message_ref(&server_message(reply)))
            .collect();
        operations.insert(
            kind.name().into(),
            json!({
                "action": "receive",
                "channel": { "$ref": CHANNEL },
                "summary": kind.summary(),
                "messages": [message_ref(&key)],
                "reply": { "channel": { "$ref": CHANNEL }, "messages": replies },
            }),
        );
    }
    operations.insert(
        "push".into(),
        json!({
            "action": "send",
            "channel": { "$ref": CHANNEL },
            "summary": "Pushes for every room of the user, from the moment the connection opens",
            "messages": pushes,
        }),
    );

    let schemas: BTreeMap<String, Value> = components
        .into_iter()
        .map(|(name, schema)| (name, to_json(schema)))
        .collect();
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "chat-engine WebSocket protocol",
            "version": env!("CARGO_PKG_VERSION"),
            "description": DESCRIPTION,
            "license": { "name": env!("CARGO_PKG_LICENSE") },
        },
        "defaultContentType": "application/json",
        "servers": {
            "chat-engine": {
                "host": host,
                "protocol": "ws",
                "description": "This server (wss behind a TLS-terminating proxy)",
                "security": [
                    { "$ref": "#/components/securitySchemes/app_token" },
                    { "$ref": "#/components/securitySchemes/app_token_query" },
                ],
            },
        },
        "channels": {
            "ws": {
                "address": "/v1/ws",
                "title": "The app's connection",
                "description": "Every frame is a JSON object in a text frame, with a `type`. \
                    Replies come in the order the requests were sent.",
                "messages": messages,
                "bindings": { "ws": { "method": "GET", "bindingVersion": "0.1.0" } },
            },
        },
        "operations": operations,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "app_token": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "The app's token (`sub` = user id) in `Authorization: Bearer`",
                },
                "app_token_query": {
                    "type": "httpApiKey",
                    "name": "token",
                    "in": "query",
                    "description": "The same token in `?token=`, for clients that cannot set headers",
                },
            },
        },
    })
}

const DESCRIPTION: &str = "The mobile app's WebSocket: it lists rooms, syncs history, \
sends, edits, deletes and reacts, and receives pushes. A request may carry an `id` (a string \
or a number); its reply carries the same `id`, and a failed request is answered `error`. \
Before the upgrade the server answers 401 for a missing, bad, expired or revoked token, 426 \
for a request that is not an upgrade, and 429 over `limits.max_connections_per_user`. A \
connection lives as long as its token: `token_expiring` comes 60 s before `exp`, and `auth` \
with a fresh token of the same user keeps the connection. Close codes: 1000 idle, 1001 \
shutdown, 1008 too many bad frames, 1009 a frame over `limits.max_frame_bytes`, 1013 outbound \
queue full (reconnect and sync), 4001 token expired (`exp` plus the configured leeway), 4003 \
disconnected by the service. Length limits are \
bytes of UTF-8 (the schemas' lengths count characters: the same for ASCII). The REST calls \
and the upgrade request are in the OpenAPI document, `/openapi.json`.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_frame_has_a_message_and_its_replies_exist() {
        let document = document("localhost:8080");
        let messages = &document["channels"]["ws"]["messages"];
        for &kind in RequestKind::ALL {
            let payload = &messages[client_message(kind.name())]["payload"];
            assert_eq!(payload["properties"]["type"]["const"], kind.name());
            assert_eq!(payload["required"][0], "type");
            for reply in kind.replies().iter().chain(&["error"]) {
                assert!(
                    messages[server_message(reply)].is_object(),
                    "{}: no server frame {reply}",
                    kind.name()
                );
            }
        }
        let sync = &messages[client_message("sync")]["payload"];
        assert_eq!(sync["not"]["anyOf"].as_array().map(Vec::len), Some(3));
        assert!(messages[client_message("send")]["payload"]
            .get("not")
            .is_none());
        let send = &messages[client_message("send")]["payload"]["properties"];
        assert_eq!(
            send["client_msg_id"]["maxLength"],
            crate::protocol::MAX_CLIENT_MSG_ID_BYTES
        );
        let react = &messages[client_message("react")]["payload"]["properties"];
        assert_eq!(
            react["reaction"]["maxLength"],
            crate::protocol::MAX_REACTION_BYTES
        );
    }

    #[test]
    fn pushes_are_the_server_frames_without_an_id() {
        let document = document("localhost:8080");
        let pushes: Vec<&str> = document["operations"]["push"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["$ref"].as_str().unwrap().rsplit('.').next().unwrap())
            .collect();
        assert_eq!(
            pushes,
            [
                "message",
                "joined",
                "left",
                "member_joined",
                "member_left",
                "typing",
                "token_expiring"
            ]
        );
        let schemas = &document["components"]["schemas"];
        for name in ["Message", "RoomView", "Id", "RequestId", "ErrorCode"] {
            assert!(schemas[name].is_object(), "component {name}");
        }
    }
}
