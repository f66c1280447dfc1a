//! Idle connections: the server's resident memory per open WebSocket that does nothing.

use std::time::Duration;

use crate::fanout::connect;
use crate::target::Target;

/// Opens `count` connections, each a member of one of `count / 10` rooms, and returns the
/// server's RSS growth per connection in KiB (VmRSS after minus before connecting).
pub fn rss_per_connection(target: &Target, count: usize) -> f64 {
    let agent = ureq::Agent::new_with_defaults();
    let rooms: Vec<(String, Vec<String>)> = (0..count / 10)
        .map(|r| {
            let room = format!("idle-r{r}");
            (
                room.clone(),
                (0..10).map(|m| format!("{room}-m{m}")).collect(),
            )
        })
        .collect();
    for (room, members) in &rooms {
        target.create_room(&agent, room, members);
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = target.rss_kib();
    let sockets = smol::block_on(async {
        let mut sockets = Vec::with_capacity(count);
        for (room, members) in &rooms {
            for member in members {
                sockets.push(connect(&target.ws_url(member, room), target.addr).await);
            }
        }
        sockets
    });
    std::thread::sleep(Duration::from_millis(1000));
    let after = target.rss_kib();
    drop(sockets);
    after.saturating_sub(before) as f64 / count as f64
}
