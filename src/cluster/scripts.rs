//! What chat-engine keeps in Redis, and the Lua scripts that decide every change there.
//!
//! Rooms are spread over `cluster.shards` shards by a hash of their id. Every key of a shard
//! carries the hash tag `{ce:<shard>}`, so each script touches keys of one Redis Cluster
//! slot only:
//!
//! - `ce:{ce:S}:room:<room id>`: hash `state` (`open` or `closed`), `kind`, `owner` (empty
//!   for direct rooms), and the last `seq` and `ts` handed out;
//! - `ce:{ce:S}:members:<room id>`: set of user ids;
//! - `ce:{ce:S}:dedup:<room id>` and `ce:{ce:S}:dedup-prev:<room id>`: the current and the
//!   previous generation of the room's dedup hash (see the send script), each mapping sender
//!   and `client_msg_id` -> `"<seq> <ts>"`, and `t<seq>` -> how many changes message `seq`
//!   has had; the nodes' storage has what both dropped; deleted with the members when the
//!   room closes;
//! - `ce:{ce:S}:log`: the shard's log, a stream capped at about `cluster.log_max_len`
//!   entries. Each entry has `room`, and either `change` (a JSON `Change` of a room's life,
//!   membership or read marker) or `seq`, `ts` and `message` (a JSON `Post`); or, for a
//!   user's disconnect (in the user's shard), `user`, `revoke` (`1` or `0`) and `at` (ms);
//! - `ce:{ce:S}:typing`: typing indicators (`room`, `user`), a stream capped at about
//!   [`TYPING_LOG_LEN`] entries, read only from its end: best effort, never replayed.
//!
//! `ce:identity` (no tag) holds `<epoch> <shards>`: the data set's random name, which tells
//! a node whether the positions it stored belong to this Redis, and the shard count every
//! node must share.
//!
//! With webhooks on, `ce:webhooks:sender` (no tag) names the node that sends them, for as
//! long as it renews it (a lease with a TTL), and the hash `ce:webhooks:delivered` maps each
//! event stream (an event's `id` less its last part) to the last seq of it that node's
//! endpoint acknowledged: every node writes every event, and the others drop their copies
//! up to there.
//!
//! Each script checks, decides, and appends the change to the log in one atomic step. A
//! change that was already made appends nothing and answers `unchanged` with the log's
//! last id, so the caller can wait until its node has applied everything up to there.

use std::sync::Arc;

use redis::{Script, ScriptInvocation};
use sha2::{Digest, Sha256};

use crate::engine::{Judged, Verdict};
use crate::protocol::{RoomId, UserId};

/// The shard that holds the keys and log entries of `id`: a room's, or a user's
/// disconnects.
pub fn shard_of(id: &str, shards: u16) -> u16 {
    let digest = Sha256::digest(id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) % u64::from(shards)) as u16
}

pub const IDENTITY_KEY: &str = "ce:identity";
pub const SENDER_KEY: &str = "ce:webhooks:sender";
pub const DELIVERED_KEY: &str = "ce:webhooks:delivered";

/// The keys of one room, all in its shard's slot.
pub struct RoomKeys {
    pub room: String,
    pub members: String,
    pub dedup: String,
    pub log: String,
    pub previous_dedup: String,
}

impl RoomKeys {
    pub fn new(room_id: &RoomId, shard: u16) -> RoomKeys {
        RoomKeys {
            room: format!("ce:{{ce:{shard}}}:room:{room_id}"),
            members: format!("ce:{{ce:{shard}}}:members:{room_id}"),
            dedup: format!("ce:{{ce:{shard}}}:dedup:{room_id}"),
            log: log_key(shard),
            previous_dedup: format!("ce:{{ce:{shard}}}:dedup-prev:{room_id}"),
        }
    }

    /// `script` with these keys in the order every script takes them, and the room id as
    /// its first argument.
    pub fn invoke<'a>(&self, script: &'a Script, room_id: &RoomId) -> ScriptInvocation<'a> {
        let mut invocation = script.prepare_invoke();
        self.add_to(&mut invocation);
        invocation.arg(room_id.as_str());
        invocation
    }

    fn add_to(&self, invocation: &mut ScriptInvocation<'_>) {
        invocation
            .key(&self.room)
            .key(&self.members)
            .key(&self.dedup)
            .key(&self.log)
            .key(&self.previous_dedup);
    }
}

/// One message (or change to one) for the send script to decide.
pub struct SendArgs {
    pub keys: RoomKeys,
    pub room_id: RoomId,
    /// `None` for RouteAPI.
    pub sender: Option<UserId>,
    /// The [`dedup_field`], empty for none.
    pub dedup: String,
    /// The asking node's last stamp in the room when it judged the send and looked for its
    /// `client_msg_id`: Redis never goes below it.
    pub floor: (u64, u64),
    /// The JSON `Post`.
    pub body: Arc<str>,
    /// For a message change: how the asking node judged it.
    pub change: Option<Judged>,
}

pub fn log_key(shard: u16) -> String {
    format!("ce:{{ce:{shard}}}:log")
}

pub fn typing_key(shard: u16) -> String {
    format!("ce:{{ce:{shard}}}:typing")
}

/// Typing entries a shard keeps: they are read as they come, so a few suffice.
pub const TYPING_LOG_LEN: u64 = 1_000;

/// The `dedup` field of a sender (empty for RouteAPI) and `client_msg_id`: the sender's
/// length first, so no two pairs make the same field.
pub fn dedup_field(sender: Option<&str>, client_msg_id: &str) -> String {
    let sender = sender.unwrap_or("");
    format!("{}:{sender}{client_msg_id}", sender.len())
}

/// Helpers every script starts with.
const PRELUDE: &str = r#"
local function last_id(log)
  local last = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
  if #last == 0 then return '0-0' end
  return last[1][1]
end
-- `spec` is the log's length cap and the asking node's name, `<max_len>:<node>` (a node
-- from before names were sent gives the cap alone). Each entry says which node asked, for
-- whoever reads the log.
local function append(log, spec, ...)
  local max_len, node = string.match(spec, '^(%d+):?(.*)$')
  return redis.call('XADD', log, 'MAXLEN', '~', max_len, '*', 'node', node, ...)
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"#;

/// Decides any number of messages, or changes to messages, in one call: how a node sends
/// everything that queued up while its previous call was out (see `sends.rs`). KEYS: room,
/// members, dedup, log and previous dedup of each send in turn. ARGV: the append spec, the
/// dedup generations' size and term (`<max fields> <ttl ms>`), then ten per send in
/// [`SendArgs`]'s order: room id, sender ('' for RouteAPI), dedup field ('' for none), floor
/// seq and floor ts (the asking node's last when it judged the send; never go below them),
/// message body, and for a message change the target's seq ('' for a new message), its
/// change count on the asking node ('' when that node does not have it yet), '1' when the
/// node judged that the change changes nothing, and '1' when it deletes its target.
///
/// Redis keeps a room's dedup fields in two generations, so its memory follows the rooms in
/// use. The current one takes every new field; once it holds `max fields` or is `ttl` old
/// it becomes the previous one (which lives two `ttl`s more) and a new one starts. Each
/// records in `h` the room's last seq when it started, and in `p` the previous one's `h`.
/// Before the horizon, the older generation's `h`, Redis holds nothing, and every node
/// holds everything in its own storage; a node looks there first, so a send whose node had
/// not applied the room up to the horizon when it looked answers `stale`. With two
/// generations only a node a whole generation behind is stale, not every send in flight
/// when one starts.
///
/// A change is accepted if the target has had as many changes here as on the asking node,
/// whose rules judged it, or if every change made since was neither a delete nor the same
/// sender's: a change's verdict depends only on whether the target is deleted and on what
/// its own sender did to it (their edit, their reaction), so many members reacting to one
/// message at once are each decided in one call. Otherwise it answers `stale` with the log's
/// last id, and the node catches up to there and judges again. Each accepted change counts
/// one more for its target, under `t<seq>`, and names who made it under `w<seq>:<count>`
/// (`d` for a delete, else `c` and the sender; no dedup field starts with a letter). A
/// target counted in neither generation was last changed before the horizon, so the asking
/// node's count is the whole count.
/// Answers, one per send: `{'new', seq, ts, id}`, `{'repeat', seq, ts, last id}`,
/// `{'nothing', last id}`, `{'stale', last id}`, or an error word.
const SEND: &str = r#"
local now = now_ms()
-- Changes a decision may be overtaken by before it is judged again.
local MAX_OVERTAKEN = 64
local max_fields, ttl = string.match(ARGV[2], '^(%d+) (%d+)$')
max_fields, ttl = tonumber(max_fields), tonumber(ttl)
-- Starts a new generation when the current one is missing, full or old, and answers the
-- horizon and what the current generation holds under `field` ('' for nothing). Each
-- generation records where it started (`h`), when (`c`), and where the one before it did
-- (`p`). A hash from before generations has no `h`: it holds the room's whole life.
local function horizon(dedup, previous, last_seq, field)
  local current = redis.call('HMGET', dedup, 'h', 'c', 'p', field)
  if current[2] and tonumber(current[2]) + ttl > now
      and redis.call('HLEN', dedup) < max_fields then
    return tonumber(current[3] or current[1]), current[4]
  end
  local older
  if redis.call('EXISTS', dedup) == 1 then
    redis.call('RENAME', dedup, previous)
    -- Outlives the new generation's term, so `p` never names a hash that is gone.
    redis.call('PEXPIRE', previous, 2 * ttl)
    older = current[1] or '0'
  else
    redis.call('DEL', previous)
    older = last_seq
  end
  redis.call('HSET', dedup, 'h', last_seq, 'c', string.format('%d', now), 'p', older)
  redis.call('PEXPIRE', dedup, 2 * ttl)
  return tonumber(older), current[4]
end
local function lookup(dedup, previous, field)
  return redis.call('HGET', dedup, field) or redis.call('HGET', previous, field)
end
local function still_holds(dedup, previous, target, version, changes, sender)
  if changes < version or changes - version > MAX_OVERTAKEN then return false end
  for n = version + 1, changes do
    local who = lookup(dedup, previous, 'w' .. target .. ':' .. n)
    if not who or who == 'd' or who == 'c' .. sender then return false end
  end
  return true
end
local function send(room, members, dedup, log, previous, room_id, sender, field, floor_seq,
                    floor_ts, body, target, version, nothing, deletes)
  local last = redis.call('HMGET', room, 'seq', 'ts', 'state')
  if last[3] ~= 'open' then return {'not_found'} end
  if sender ~= '' and redis.call('SISMEMBER', members, sender) == 0 then
    return {'not_member'}
  end
  if field ~= '' or target ~= '' then
    local h, known = horizon(dedup, previous, last[1], field)
    if field ~= '' then
      known = known or redis.call('HGET', previous, field)
      if known then
        local seq, ts = string.match(known, '^(%d+) (%d+)$')
        return {'repeat', seq, ts, last_id(log)}
      end
    end
    if tonumber(floor_seq) < h then return {'stale', last_id(log)} end
  end
  if target ~= '' then
    if version == '' then
      if tonumber(target) > tonumber(last[1]) then return {'no_message', target} end
      return {'stale', last_id(log)}
    end
    local changes = tonumber(lookup(dedup, previous, 't' .. target) or version)
    if not still_holds(dedup, previous, target, tonumber(version), changes, sender) then
      return {'stale', last_id(log)}
    end
    if nothing == '1' then return {'nothing', last_id(log)} end
    local count = string.format('%d', changes + 1)
    redis.call('HSET', dedup, 't' .. target, count, 'w' .. target .. ':' .. count,
               deletes == '1' and 'd' or 'c' .. sender)
  end
  local seq = math.max(tonumber(last[1]), tonumber(floor_seq)) + 1
  local ts = math.max(now, tonumber(last[2]) + 1, tonumber(floor_ts) + 1)
  seq, ts = string.format('%d', seq), string.format('%d', ts)
  redis.call('HSET', room, 'seq', seq, 'ts', ts)
  if field ~= '' then redis.call('HSET', dedup, field, seq .. ' ' .. ts) end
  local id = append(log, ARGV[1], 'room', room_id, 'seq', seq, 'ts', ts, 'message', body)
  return {'new', seq, ts, id}
end
local answers = {}
for i = 0, #KEYS / 5 - 1 do
  local k, a = i * 5, 2 + i * 10
  answers[i + 1] = send(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5],
                        unpack(ARGV, a + 1, a + 10))
end
return answers
"#;

/// KEYS: room, members, dedup, log, previous dedup. ARGV: room id, kind, owner ('' for
/// none), max log length, change, then the members.
const CREATE: &str = r#"
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'closed' then return {'closed'} end
if state == 'open' then
  local room = redis.call('HMGET', KEYS[1], 'kind', 'owner')
  if room[1] ~= ARGV[2] or room[2] ~= ARGV[3] then return {'conflict'} end
  return {'unchanged', last_id(KEYS[4])}
end
redis.call('HSET', KEYS[1], 'state', 'open', 'kind', ARGV[2], 'owner', ARGV[3], 'seq', '0', 'ts', '0')
for i = 6, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
return {'changed', append(KEYS[4], ARGV[4], 'room', ARGV[1], 'change', ARGV[5])}
"#;

/// KEYS: room, members, dedup, log, previous dedup. ARGV: room id, user, max log length,
/// change.
const JOIN: &str = r#"
local room = redis.call('HMGET', KEYS[1], 'state', 'kind')
if room[1] ~= 'open' then return {'not_found'} end
if room[2] == 'direct' then return {'forbidden'} end
if redis.call('SADD', KEYS[2], ARGV[2]) == 0 then return {'unchanged', last_id(KEYS[4])} end
return {'changed', append(KEYS[4], ARGV[3], 'room', ARGV[1], 'change', ARGV[4])}
"#;

/// KEYS: room, members, dedup, log, previous dedup. ARGV: room id, user, max log length,
/// change.
const LEAVE: &str = r#"
local room = redis.call('HMGET', KEYS[1], 'state', 'kind')
if room[1] ~= 'open' then return {'not_found'} end
if room[2] == 'direct' then return {'forbidden'} end
if redis.call('SREM', KEYS[2], ARGV[2]) == 0 then return {'unchanged', last_id(KEYS[4])} end
return {'changed', append(KEYS[4], ARGV[3], 'room', ARGV[1], 'change', ARGV[4])}
"#;

/// KEYS: room, members, dedup, log, previous dedup. ARGV: room id, max log length, change.
const CLOSE: &str = r#"
local room = redis.call('HMGET', KEYS[1], 'state', 'kind')
if room[1] ~= 'open' then return {'unchanged', last_id(KEYS[4])} end
if room[2] == 'direct' then return {'forbidden'} end
redis.call('HSET', KEYS[1], 'state', 'closed')
redis.call('DEL', KEYS[2], KEYS[3], KEYS[5])
return {'changed', append(KEYS[4], ARGV[2], 'room', ARGV[1], 'change', ARGV[3])}
"#;

/// KEYS: room, members, dedup, log, previous dedup. ARGV: room id, user, max log length,
/// change.
const READ: &str = r#"
if redis.call('HGET', KEYS[1], 'state') ~= 'open' then return {'not_found'} end
if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 0 then return {'not_member'} end
return {'changed', append(KEYS[4], ARGV[3], 'room', ARGV[1], 'change', ARGV[4])}
"#;

/// KEYS: log. ARGV: user, max log length, revoke ('1' or '0'). Stamps the disconnect with
/// Redis's clock, so every node closes and revokes as of one moment.
const DISCONNECT: &str = r#"
local at = string.format('%d', now_ms())
return append(KEYS[1], ARGV[2], 'user', ARGV[1], 'revoke', ARGV[3], 'at', at)
"#;

/// KEYS: the sender lease. ARGV: this node's name, the lease's TTL in ms. Takes the lease
/// if nobody holds it, or renews it if this node does; answers 1 if this node holds it.
const LEASE: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

/// KEYS: the delivered hash. ARGV: stream, seq, stream, seq, ... Moves each stream's mark
/// forward only: a sender that took over may send again what an earlier one had.
const DELIVERED: &str = r#"
for i = 1, #ARGV, 2 do
  local was = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > was then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 0
"#;

/// The scripts, each loaded into Redis once per connection (EVALSHA, then EVAL on
/// NOSCRIPT, which `redis::Script` does by itself).
pub struct Scripts {
    send: Script,
    pub create: Script,
    pub join: Script,
    pub leave: Script,
    pub close: Script,
    pub read: Script,
    pub disconnect: Script,
    pub lease: Script,
    pub delivered: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        let script = |body: &str| Script::new(&format!("{PRELUDE}{body}"));
        Scripts {
            send: script(SEND),
            create: script(CREATE),
            join: script(JOIN),
            leave: script(LEAVE),
            close: script(CLOSE),
            read: script(READ),
            disconnect: script(DISCONNECT),
            lease: script(LEASE),
            delivered: script(DELIVERED),
        }
    }

    /// One call of the send script that decides every one of `sends`, in order.
    pub fn send<'a>(
        &'a self,
        sends: &[SendArgs],
        append_spec: &str,
        dedup_window: &str,
    ) -> ScriptInvocation<'a> {
        let mut invocation = self.send.prepare_invoke();
        invocation.arg(append_spec).arg(dedup_window);
        for send in sends {
            let (target, version, nothing, deletes) = match &send.change {
                None => (String::new(), String::new(), false, false),
                Some(judged) => (
                    judged.target_seq.to_string(),
                    judged.version.map(|v| v.to_string()).unwrap_or_default(),
                    judged.verdict == Verdict::Nothing,
                    judged.deletes,
                ),
            };
            send.keys.add_to(&mut invocation);
            invocation
                .arg(send.room_id.as_str())
                .arg(send.sender.as_ref().map_or("", UserId::as_str))
                .arg(&send.dedup)
                .arg(send.floor.0)
                .arg(send.floor.1)
                .arg(&*send.body)
                .arg(target)
                .arg(version)
                .arg(if nothing { "1" } else { "0" })
                .arg(if deletes { "1" } else { "0" });
        }
        invocation
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        let room = RoomId::parse("route-1").unwrap();
        assert_eq!(shard_of(room.as_str(), 16), shard_of(room.as_str(), 16));
        let used: std::collections::HashSet<u16> =
            (0..200).map(|i| shard_of(&format!("r{i}"), 16)).collect();
        assert_eq!(used.len(), 16, "200 rooms reach every one of 16 shards");
    }

    #[test]
    fn a_rooms_keys_share_one_hash_tag() {
        let keys = RoomKeys::new(&RoomId::parse("r").unwrap(), 3);
        let typing = typing_key(3);
        for key in [
            &keys.room,
            &keys.members,
            &keys.dedup,
            &keys.log,
            &keys.previous_dedup,
            &typing,
        ] {
            assert!(key.starts_with("ce:{ce:3}:"), "{key}");
        }
    }

    #[test]
    fn dedup_fields_do_not_collide() {
        assert_ne!(dedup_field(Some("ab"), "c"), dedup_field(Some("a"), "bc"));
        assert_ne!(dedup_field(None, "c"), dedup_field(Some("c"), ""));
    }
}
