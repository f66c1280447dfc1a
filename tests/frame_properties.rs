//! Property tests of frame parsing and validation (proptest): whatever a client sends, the
//! parser answers with a request or a `bad_request`, never a panic, and what it accepts is
//! exactly what was sent.

use chat_engine::protocol::{parse_request, HistoryQuery, RequestBody, RoomId, UserId};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Any JSON value, nested a few levels, with the protocol's field names likely to appear.
fn any_json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("type".to_owned()),
        Just("id".to_owned()),
        Just("room_id".to_owned()),
        Just("user_id".to_owned()),
        Just("text".to_owned()),
        Just("data".to_owned()),
        Just("seq".to_owned()),
        Just("limit".to_owned()),
        Just("since_seq".to_owned()),
        "[a-z_]{1,10}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        prop_oneof![
            Just("send".to_owned()),
            Just("sync".to_owned()),
            Just("rooms".to_owned()),
            Just("ping".to_owned()),
            Just("read".to_owned()),
            Just("typing".to_owned()),
            Just("direct".to_owned()),
            "\\PC{0,20}",
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn follows_id_rules(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 128
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@-".contains(&b))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn any_text_is_a_request_or_bad_request(text in "\\PC{0,200}") {
        if let Err((_, error)) = parse_request(&text) {
            prop_assert_eq!(error.code(), "bad_request");
        }
    }

    #[test]
    fn any_json_is_a_request_or_bad_request(value in any_json()) {
        match parse_request(&value.to_string()) {
            Ok(request) => prop_assert!(request.id.as_ref().is_none_or(|id| id.is_string() || id.is_number())),
            Err((_, error)) => prop_assert_eq!(error.code(), "bad_request"),
        }
    }

    #[test]
    fn ids_are_accepted_exactly_when_they_follow_the_rules(
        text in prop_oneof!["[A-Za-z0-9._:@-]{0,130}", "\\PC{0,130}"]
    ) {
        let valid = follows_id_rules(&text);
        prop_assert_eq!(RoomId::parse(&text).is_ok(), valid);
        prop_assert_eq!(UserId::parse(&text).is_ok(), valid);
        let frame = json!({"type": "sync", "room_id": text});
        prop_assert_eq!(parse_request(&frame.to_string()).is_ok(), valid);
    }

    #[test]
    fn a_valid_send_parses_to_what_was_sent(
        room in "[A-Za-z0-9._:@-]{1,128}",
        text in "\\PC{0,300}",
        id in any::<u32>(),
        client_msg_id in proptest::option::of("[a-z0-9-]{1,64}"),
    ) {
        let frame = json!({"type": "send", "id": id, "room_id": room, "text": text,
                           "data": {"k": [1, 2]}, "client_msg_id": client_msg_id});
        let request = parse_request(&frame.to_string()).map_err(|(_, e)| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(request.id, Some(json!(id)));
        let RequestBody::Send { room_id, message } = request.body else {
            return Err(TestCaseError::fail("not a send"));
        };
        prop_assert_eq!(room_id.as_str(), room.as_str());
        prop_assert_eq!(&message.text, &text);
        prop_assert_eq!(&message.client_msg_id, &client_msg_id);
        prop_assert!(message.validate(16_384).is_ok());
        prop_assert_eq!(message.validate(text.len()).is_ok(), false, "data counts toward the size");
    }

    #[test]
    fn sync_accepts_at_most_one_cursor_and_caps_the_limit(
        since_ts in proptest::option::of(any::<u64>()),
        since_seq in proptest::option::of(any::<u64>()),
        before_seq in proptest::option::of(any::<u64>()),
        limit in proptest::option::of(0u64..2_000),
    ) {
        let mut frame = json!({"type": "sync", "room_id": "r1"});
        for (key, value) in [("since_ts", since_ts), ("since_seq", since_seq), ("before_seq", before_seq), ("limit", limit)] {
            if let Some(value) = value {
                frame[key] = json!(value);
            }
        }
        let cursors = [since_ts, since_seq, before_seq].iter().flatten().count();
        let valid = cursors <= 1 && limit != Some(0);
        match parse_request(&frame.to_string()) {
            Ok(request) => {
                prop_assert!(valid);
                let RequestBody::Sync { query, .. } = request.body else {
                    return Err(TestCaseError::fail("not a sync"));
                };
                let want = HistoryQuery {
                    since_ts,
                    since_seq,
                    before_seq,
                    limit: limit.map(|l| (l as usize).min(500)),
                };
                prop_assert_eq!(query, want);
            }
            Err((_, error)) => {
                prop_assert!(!valid, "{}", error);
                prop_assert_eq!(error.code(), "bad_request");
            }
        }
    }
}
