//! Load beside a scenario: `Refresh` of random, well-formed refresh tokens at a fixed rate, as
//! someone guessing tokens would send them. Each is refused; what it must not do is cost the
//! server more than one indexed read, and so move the scenario's latency.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use sessiond::{
    api::pb::{self, session_service_client::SessionServiceClient},
    token::RefreshToken,
};
use tokio::{sync::watch, task::JoinSet, time::MissedTickBehavior};
use tonic::{Code, transport::Channel};

/// The noise under way; [`RefreshNoise::stop`] ends it and says what the server answered.
pub struct RefreshNoise {
    stop: watch::Sender<bool>,
    sender: tokio::task::JoinHandle<BTreeMap<String, u64>>,
}

impl RefreshNoise {
    /// Sends `rate` random-token refreshes per second over `client` until stopped. Each call is
    /// its own task, so a slow answer never delays the schedule.
    pub fn start(client: SessionServiceClient<Channel>, rate: f64) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let sender = tokio::spawn(async move {
            let answers = Arc::new(Mutex::new(BTreeMap::<String, u64>::new()));
            let mut calls = JoinSet::new();
            let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = ticks.tick() => {
                        let (mut client, answers) = (client.clone(), answers.clone());
                        calls.spawn(async move {
                            let code = match RefreshToken::generate() {
                                Ok(token) => client
                                    .refresh(pb::RefreshRequest {
                                        refresh_token: token.expose().to_owned(),
                                    })
                                    .await
                                    .map_or_else(|status| status.code(), |_| Code::Ok),
                                Err(_) => Code::Internal,
                            };
                            *answers
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .entry(format!("{code:?}"))
                                .or_default() += 1;
                        });
                    }
                }
                while calls.try_join_next().is_some() {}
            }
            while calls.join_next().await.is_some() {}
            std::mem::take(&mut *answers.lock().unwrap_or_else(PoisonError::into_inner))
        });
        Self { stop, sender }
    }

    /// Stops sending; the count of each status code the server answered.
    pub async fn stop(self) -> BTreeMap<String, u64> {
        let _ = self.stop.send(true);
        self.sender.await.unwrap_or_default()
    }
}
