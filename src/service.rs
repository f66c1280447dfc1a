//! systemd integration: READY once the server serves, STOPPING when it begins to shut down,
//! and a watchdog fed only while both the event loop and the storage writer answer.
//! Outside systemd (no `NOTIFY_SOCKET`, no `WATCHDOG_USEC`) every call does nothing.

use sd_notify::NotifyState;

use crate::engine::Engine;

/// Tells systemd the server is up (`Type=notify`): storage is open and the listener bound.
pub fn ready() {
    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// Tells systemd the server is shutting down, so it waits instead of declaring a failure.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        log::warn!("cannot notify systemd: {e}");
    }
}

/// Feeds the systemd watchdog (`WatchdogSec=`) at half its interval, each time after a
/// barrier has passed through the storage writer. A wedged writer or a stalled event loop
/// stops the feeding, and systemd restarts the service. Never returns.
pub async fn feed_watchdog(engine: Engine) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return std::future::pending().await;
    };
    log::info!("feeding the systemd watchdog every {:?}", interval / 2);
    loop {
        smol::Timer::after(interval / 2).await;
        let responded = smol::future::or(engine.writer_responds(), async {
            smol::Timer::after(interval / 2).await;
            false
        })
        .await;
        if responded {
            notify(&[NotifyState::Watchdog]);
        } else {
            log::error!("storage writer did not answer within {:?}", interval / 2);
        }
    }
}
