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
//! whole sign-in's CPU (`docs/performance-log.md`, eighth pass).
//!
//! So the first command that finds the queue empty starts a flush task,
//! which first yields until the worker has run every task that was ready
//! (`tokio::task::yield_now` defers it until then), then sends everything
//! queued meanwhile as pipelines (not transactions) of at most
//! [`MAX_PIPELINE`] commands, all at once and in queue order, and hands
//! each caller its own answer as its pipeline's replies come in. Under
//! load many commands share few writes and reads; when idle the flush runs
//! at once, after one look at the I/O driver.
//!
//! Nothing about an operation changes: each command is the one it built,
//! executed once, in the order queued; a server error answers only its own
//! command (a `NOSCRIPT` still makes that one operation send its script's
//! text); a failure of a pipeline's exchange answers every command of that
//! pipeline with that error, and each caller's own retry rule ([`super::redis`])
//! decides what happens next. The flush runs in its own task, so a caller
//! that gives up (its deadline, a client that went away) cancels nothing
//! for the others. Cluster connections route each command by its key and do
//! not batch here.

use redis::{Cmd, ErrorKind, RedisError, Value};
use std::sync::Mutex;
use tokio::sync::oneshot;

/// The answer to one command.
pub(super) type Answer = Result<Value, RedisError>;

/// The most commands one pipeline carries. A flush that found more sends
/// them as several pipelines at once, in queue order, each answered as its
/// own replies come in (the `redis` crate answers a pipeline only when its
/// last reply is in), so no caller waits for a long pipeline's last reply.
/// Measured under load (`docs/performance-log.md`, thirteenth and fourteenth
/// passes): ahead in most alternated pairs, but profiles found no less work
/// per operation once the machine's drift was taken out; 8, 16 and 32
/// alike, 32 splits the fewest flushes.
pub(super) const MAX_PIPELINE: usize = 32;

/// Commands sent together, and where each answer goes, in the same order.
pub(super) type Chunk = (redis::Pipeline, Vec<oneshot::Sender<Answer>>);

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

    /// Everything queued, as pipelines of at most [`MAX_PIPELINE`]
    /// commands in queue order, each with its answers' destinations in the
    /// same order; the queue is empty again.
    pub(super) fn take(&self) -> Vec<Chunk> {
        let queued = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()));
        let mut chunks: Vec<Chunk> = Vec::with_capacity(queued.len().div_ceil(MAX_PIPELINE));
        for (cmd, reply) in queued {
            match chunks.last_mut() {
                Some((pipe, replies)) if replies.len() < MAX_PIPELINE => {
                    pipe.add_command(cmd);
                    replies.push(reply);
                }
                _ => {
                    let mut pipe = redis::pipe();
                    pipe.add_command(cmd);
                    chunks.push((pipe, vec![reply]));
                }
            }
        }
        chunks
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
        let mut chunks = batch.take();
        assert_eq!(chunks.len(), 1);
        assert!(batch.take().is_empty(), "taking empties the queue");
        let Some((pipe, replies)) = chunks.pop() else {
            panic!("one chunk")
        };
        assert_eq!(pipe.len(), 4);
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
    fn a_failed_exchange_fails_every_command_of_its_pipeline() {
        let batch = Batch::default();
        let mut answers = queued(&batch, 3);
        let replies = batch.take().into_iter().flat_map(|(_, r)| r).collect();
        deliver(replies, Err(RedisError::from((ErrorKind::Io, "connection reset"))));
        for answer in &mut answers {
            let e = answer.try_recv().ok().and_then(Result::err);
            assert!(e.is_some_and(|e| e.kind() == ErrorKind::Io));
        }
        // The next push starts a new flush.
        let (tx, _rx) = oneshot::channel();
        assert!(batch.push(redis::cmd("PING"), tx));
    }

    #[test]
    fn a_long_queue_goes_as_capped_pipelines_in_queue_order() {
        let batch = Batch::default();
        let n = 2 * MAX_PIPELINE + 5;
        let mut answers = queued(&batch, n);
        let chunks = batch.take();
        let sizes: Vec<usize> = chunks
            .iter()
            .map(|(pipe, replies)| {
                assert_eq!(pipe.len(), replies.len());
                pipe.len()
            })
            .collect();
        assert_eq!(sizes, vec![MAX_PIPELINE, MAX_PIPELINE, 5]);
        // Each chunk's commands are the next ones queued, and each answer
        // reaches the command it was for.
        let mut i = 0;
        for (pipe, replies) in chunks {
            let keys: Vec<Vec<u8>> = pipe
                .cmd_iter()
                .map(|c| {
                    // The key: the argument after the command's name.
                    match c.args_iter().nth(1) {
                        Some(redis::Arg::Simple(key)) => key.to_vec(),
                        _ => Vec::new(),
                    }
                })
                .collect();
            let values = keys.iter().map(|k| Value::BulkString(k.clone())).collect();
            for k in &keys {
                assert_eq!(k, format!("k{i}").as_bytes());
                i += 1;
            }
            deliver(replies, Ok(values));
        }
        for (i, answer) in answers.iter_mut().enumerate() {
            assert_eq!(
                answer.try_recv().ok().and_then(Result::ok),
                Some(Value::BulkString(format!("k{i}").into_bytes()))
            );
        }
    }
}
