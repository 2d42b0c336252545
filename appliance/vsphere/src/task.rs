//! Tasks: wait with progress and a timeout (cancelling on timeout), and cancel.

use std::time::{Duration, Instant};

use crate::client::{shape, Client};
use crate::error::{Result, VsphereError};
use crate::soap::{self, MoRef};
use crate::xml::Node;

/// Progress of a running task, for callers that report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskProgress {
    /// Percent done, when the server says.
    pub percent: Option<u32>,
}

impl Client {
    /// Waits for `task`, polling its `info`; returns the `result` node on success. A task
    /// that outlives `timeout` is cancelled and reported as [`VsphereError::TaskTimeout`].
    pub async fn wait_task(
        &self,
        task: &MoRef,
        what: &str,
        timeout: Duration,
        mut on_progress: impl FnMut(TaskProgress) + Send,
    ) -> Result<Option<Node>> {
        let start = Instant::now();
        let mut delay = Duration::from_millis(50);
        loop {
            let o = self.properties(task, &["info"]).await?;
            let info = o
                .props
                .get("info")
                .ok_or_else(|| shape(what, "task without info"))?;
            match info.text_at(&["state"]).unwrap_or("") {
                "success" => return Ok(info.child("result").cloned()),
                "error" => {
                    return Err(match info.child("error") {
                        Some(e) => soap::decode_method_fault(what, e),
                        None => shape(what, "task failed without an error"),
                    })
                }
                _ => on_progress(TaskProgress {
                    percent: info.parse_at(&["progress"]),
                }),
            }
            if start.elapsed() >= timeout {
                if let Err(e) = self.cancel_task(task).await {
                    tracing::warn!(task = %task, error = %e, "cancelling a timed-out task failed");
                }
                return Err(VsphereError::TaskTimeout {
                    task: task.to_string(),
                    what: what.to_string(),
                    secs: timeout.as_secs(),
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// Asks the server to cancel a task (best effort: not every task is cancellable).
    pub async fn cancel_task(&self, task: &MoRef) -> Result<()> {
        self.invoke("CancelTask", &task.xml("_this"))
            .await
            .map(|_| ())
    }

    /// Invokes a `*_Task` method and returns the task reference.
    pub(crate) async fn start_task(&self, method: &str, params: &str) -> Result<MoRef> {
        let r = self.invoke(method, params).await?;
        r.child("returnval")
            .and_then(MoRef::from_node)
            .ok_or_else(|| shape(method, "no task in the response"))
    }
}
