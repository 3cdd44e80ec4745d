//! Commands of concurrent operations sent to Redis together.
//!
//! Each store operation is one command (or one script), and a gateway under
//! load runs many at once on few worker threads. Sent one by one, each costs
//! a `writev` to Redis (on loopback the sender also runs the receiver's TCP
//! processing and wakes it) and a trip through the connection's driver task;
//! the `redis` crate's multiplexed connection only batches the commands that
//! are already queued when its driver runs, and tokio runs a task it just
//! woke (the driver) right after the current one, before any other request
//! had a chance to queue a command. Profiled, that was about a quarter of a
//! whole sign-in's CPU (`docs/PERFORMANCE.md`, eighth pass).
//!
//! So the first command that finds the queue empty starts a flush task,
//! which first yields until the worker has run every task that was ready
//! (`tokio::task::yield_now` defers it until then), then sends everything
//! queued meanwhile as one pipeline (not a transaction) and hands each
//! caller its own answer. Under load many commands share one write and one
//! read; when idle the flush runs at once, after one look at the I/O driver.
//!
//! Nothing about an operation changes: each command is the one it built,
//! executed once, in the order queued; a server error answers only its own
//! command (a `NOSCRIPT` still makes that one operation send its script's
//! text); a failure of the whole exchange answers every command of the batch
//! with that error, and each caller's own retry rule ([`super::redis`])
//! decides what happens next. The flush runs in its own task, so a caller
//! that gives up (its deadline, a client that went away) cancels nothing
//! for the others. Cluster connections route each command by its key and do
//! not batch here.

use redis::{Cmd, ErrorKind, RedisError, Value};
use std::sync::Mutex;
use tokio::sync::oneshot;

/// The answer to one command.
pub(super) type Answer = Result<Value, RedisError>;

/// Commands waiting for the next flush, with where their answers go.
#[derive(Default)]
pub(super) struct Batch {
    queue: Mutex<Vec<(Cmd, oneshot::Sender<Answer>)>>,
}

impl Batch {
    /// Queues `cmd`. `true` when the queue was empty: the caller starts the
    /// flush that will send it (exactly one flush per non-empty queue).
    pub(super) fn push(&self, cmd: Cmd, reply: oneshot::Sender<Answer>) -> bool {
        let mut queue = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.push((cmd, reply));
        queue.len() == 1
    }

    /// Everything queued, as a pipeline and the answers' destinations in
    /// the same order; the queue is empty again.
    pub(super) fn take(&self) -> (redis::Pipeline, Vec<oneshot::Sender<Answer>>) {
        let queued = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()));
        let mut pipe = redis::pipe();
        let mut replies = Vec::with_capacity(queued.len());
        for (cmd, reply) in queued {
            pipe.add_command(cmd);
            replies.push(reply);
        }
        (pipe, replies)
    }
}

/// Hands each caller its answer: the `i`-th value to the `i`-th command,
/// a server error as that command's error (as `Cmd::query_async` would);
/// a failed exchange, or an answer missing, fails the commands concerned.
pub(super) fn deliver(replies: Vec<oneshot::Sender<Answer>>, answers: Result<Vec<Value>, RedisError>) {
    match answers {
        Ok(values) => {
            let mut values = values.into_iter();
            for reply in replies {
                let answer = match values.next() {
                    Some(value) => value.extract_error(),
                    None => Err(RedisError::from((
                        ErrorKind::UnexpectedReturnType,
                        "Redis answered fewer replies than commands",
                    ))),
                };
                // A caller that gave up dropped its receiver: nothing to do.
                let _ = reply.send(answer);
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// The error of a command whose flush task ended without answering it
/// (the runtime shutting down).
pub(super) fn dropped() -> RedisError {
    RedisError::from((ErrorKind::Io, "the batch carrying this command was dropped"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(batch: &Batch, n: usize) -> Vec<oneshot::Receiver<Answer>> {
        (0..n)
            .map(|i| {
                let (tx, rx) = oneshot::channel();
                let first = batch.push(redis::cmd("GET").arg(format!("k{i}")).clone(), tx);
                assert_eq!(first, i == 0, "only the first push starts a flush");
                rx
            })
            .collect()
    }

    #[test]
    fn each_command_gets_its_own_answer_and_a_server_error_only_its_own() {
        let batch = Batch::default();
        let mut answers = queued(&batch, 4);
        let (pipe, replies) = batch.take();
        assert_eq!(pipe.len(), 4);
        assert!(batch.take().1.is_empty(), "taking empties the queue");
        let noscript = redis::parse_redis_value(b"-NOSCRIPT No matching script.\r\n");
        assert!(matches!(noscript, Ok(Value::ServerError(_))), "{noscript:?}");
        deliver(
            replies,
            Ok(vec![
                Value::BulkString(b"a".to_vec()),
                Value::Nil,
                noscript.unwrap_or(Value::Nil),
            ]),
        );
        assert_eq!(
            answers[0].try_recv().ok().and_then(Result::ok),
            Some(Value::BulkString(b"a".to_vec()))
        );
        assert_eq!(answers[1].try_recv().ok().and_then(Result::ok), Some(Value::Nil));
        let noscript = answers[2].try_recv().ok().and_then(Result::err);
        assert_eq!(
            noscript.as_ref().and_then(RedisError::code),
            Some("NOSCRIPT"),
            "{noscript:?}"
        );
        let missing = answers[3].try_recv().ok().and_then(Result::err);
        assert!(missing.is_some_and(|e| e.kind() == ErrorKind::UnexpectedReturnType));
    }

    #[test]
    fn a_failed_exchange_fails_every_command_of_the_batch() {
        let batch = Batch::default();
        let mut answers = queued(&batch, 3);
        let (_, replies) = batch.take();
        deliver(replies, Err(RedisError::from((ErrorKind::Io, "connection reset"))));
        for answer in &mut answers {
            let e = answer.try_recv().ok().and_then(Result::err);
            assert!(e.is_some_and(|e| e.kind() == ErrorKind::Io));
        }
        // The next push starts a new flush.
        let (tx, _rx) = oneshot::channel();
        assert!(batch.push(redis::cmd("PING"), tx));
    }
}
