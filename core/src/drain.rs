//! One drain primitive for every listener: on shutdown, stop accepting, let in-flight work finish
//! up to a deadline.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Creates a drain signal and the watch that listeners and connections hold.
pub fn channel() -> (Signal, Watch) {
    let (tx, rx) = watch::channel(false);
    let (done_tx, done_rx) = mpsc::channel(1);
    (Signal { tx, done_rx }, Watch { rx, _done: done_tx })
}

/// Held by whoever decides to shut down.
#[derive(Debug)]
pub struct Signal {
    tx: watch::Sender<bool>,
    done_rx: mpsc::Receiver<()>,
}

/// Held by everything that must finish before shutdown completes. Clone it per connection.
#[derive(Clone, Debug)]
pub struct Watch {
    rx: watch::Receiver<bool>,
    _done: mpsc::Sender<()>,
}

impl Signal {
    /// Signals drain and waits until every [`Watch`] is dropped or `deadline` passes. Returns
    /// whether everything finished in time.
    pub async fn drain(mut self, deadline: Duration) -> bool {
        let _ = self.tx.send(true);
        tokio::time::timeout(deadline, self.done_rx.recv())
            .await
            .is_ok()
    }
}

impl Watch {
    /// Resolves once drain has been signalled.
    pub async fn signaled(&self) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|draining| *draining).await;
    }

    /// Whether drain has been signalled.
    pub fn is_draining(&self) -> bool {
        *self.rx.borrow()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_watchers_up_to_the_deadline() {
        let (signal, watch) = channel();
        let conn = watch.clone();
        let task = tokio::spawn(async move {
            conn.signaled().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(conn);
        });
        drop(watch);
        assert!(signal.drain(Duration::from_secs(5)).await);
        task.await.expect("task");

        let (signal, watch) = channel();
        assert!(!signal.drain(Duration::from_millis(50)).await);
        assert!(watch.is_draining());
    }
}
