//! Physical WAL streaming: START_REPLICATION, the CopyBoth loop, timeline switches and the
//! CopyDone handshake.
//!
//! The loop answers keepalives that ask for a reply at once and sends a status update every
//! `status_interval`, so `wal_sender_timeout` never fires and a primary's shutdown never waits for
//! us. It stops when told (cancellation), when the written position reaches a stop LSN that may
//! arrive while streaming (the end of a base backup), or when the server ends the stream.
//!
//! Neighbours: `conn` provides the session, `wal_sink` the files, `proto::replication` the codec.

pub mod archive_dir;
pub mod available;
pub mod receivewal;
pub mod wal_compress;
pub mod wal_sink;

use std::io;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::wal_sink::SegmentWriter;
use crate::conn::{Connection, ConnectionError};
use crate::ids::TimelineId;
use crate::lsn::Lsn;
use crate::proto::backend::BackendMessage;
use crate::proto::command::ReplicationCommand;
use crate::proto::replication::{PgTimestamp, StandbyStatusUpdate, WalSenderMessage};
use crate::proto::ProtocolError;

#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("write WAL")]
    Io(#[from] io::Error),
    #[error("WAL arrived out of order: expected {expected}, server sent {got}")]
    Gap { expected: Lsn, got: Lsn },
    #[error("server switched to timeline {timeline} at {switch_point}, before WAL already received up to {received}")]
    TimelineFork {
        timeline: TimelineId,
        switch_point: Lsn,
        received: Lsn,
    },
}

#[derive(Debug, Clone)]
pub struct StreamOptions {
    pub slot: Option<String>,
    /// Where to start; rounded down to its segment start so every file is written from offset 0.
    pub start: Lsn,
    pub timeline: TimelineId,
    pub status_interval: Duration,
    /// Report the flushed position. Off for a backup's streamer: a flush of 0 keeps it out of
    /// synchronous replication even under `synchronous_standby_names = '*'`.
    pub report_flush: bool,
}

/// Why streaming stopped without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    ReachedStop { position: Lsn },
    ServerShutdown { position: Lsn },
    Cancelled { position: Lsn },
}

/// Streams WAL into `writer` until a stop condition. `stop_at` may be set while streaming.
pub async fn stream_wal(
    conn: &mut Connection,
    options: &StreamOptions,
    writer: &mut SegmentWriter,
    mut stop_at: watch::Receiver<Option<Lsn>>,
    cancel: &CancellationToken,
) -> Result<StreamEnd, ReplicationError> {
    let segment_size = writer.segment_size();
    let mut timeline = options.timeline;
    let mut position = options.start.segment_start(segment_size);
    loop {
        let command = ReplicationCommand::StartPhysical {
            slot: options.slot.as_deref(),
            start: position,
            timeline,
        };
        conn.send_query(&command.render())?;
        conn.flush().await?;
        let mut session = Session {
            conn: &mut *conn,
            writer: &mut *writer,
            options,
            timeline,
            position,
            flushed: position,
        };
        match session.run(&mut stop_at, cancel).await? {
            Outcome::Ended(end) => return Ok(end),
            Outcome::NextTimeline {
                timeline: next,
                start,
            } => {
                if start > session.position {
                    return Err(ReplicationError::TimelineFork {
                        timeline: next,
                        switch_point: start,
                        received: session.position,
                    });
                }
                let (_, history) = conn.timeline_history(next).await?;
                writer.write_history(next, &history)?;
                tracing::info!(timeline = %next, %start, "following timeline switch");
                timeline = next;
                position = start.segment_start(segment_size);
            }
        }
    }
}

enum Outcome {
    Ended(StreamEnd),
    NextTimeline { timeline: TimelineId, start: Lsn },
}

struct Session<'a> {
    conn: &'a mut Connection,
    writer: &'a mut SegmentWriter,
    options: &'a StreamOptions,
    timeline: TimelineId,
    /// Everything before this was written.
    position: Lsn,
    flushed: Lsn,
}

impl Session<'_> {
    async fn run(
        &mut self,
        stop_at: &mut watch::Receiver<Option<Lsn>>,
        cancel: &CancellationToken,
    ) -> Result<Outcome, ReplicationError> {
        match self.conn.read_message().await? {
            BackendMessage::CopyBothResponse => {}
            // A historic timeline that ends exactly at the start: no COPY, just the next timeline.
            BackendMessage::RowDescription { .. } => return self.read_next_timeline().await,
            BackendMessage::ErrorResponse(e) => return Err(self.drain_error(e).await),
            other => return Err(ConnectionError::unexpected("CopyBothResponse", &other).into()),
        }
        let mut ticker = tokio::time::interval(self.options.status_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopping = false;
        // False once the stop sender is gone: nobody will move the stop position any more, so
        // the loop stops watching it (its last value still counts) and keeps reading.
        let mut stop_may_change = true;
        loop {
            if !stopping && self.stop_reached(*stop_at.borrow()) {
                // A last report of what we have, then CopyDone: nothing may follow CopyDone.
                self.send_status()?;
                self.conn.send_copy_done();
                self.conn.flush().await?;
                stopping = true;
            }
            let message = tokio::select! {
                biased;
                _ = cancel.cancelled(), if !stopping => {
                    // As at a stop position: report what we have (after fsync, with a slot) so
                    // the slot keeps no more WAL than a restart will ask for.
                    self.send_status()?;
                    self.conn.send_copy_done();
                    self.conn.flush().await?;
                    stopping = true;
                    continue;
                }
                changed = stop_at.changed(), if !stopping && stop_may_change => {
                    stop_may_change = changed.is_ok();
                    continue;
                }
                _ = ticker.tick(), if !stopping => {
                    self.send_status()?;
                    self.conn.flush().await?;
                    continue;
                }
                message = self.conn.read_message() => message?,
            };
            match message {
                BackendMessage::CopyData(payload) => match WalSenderMessage::parse(payload)? {
                    WalSenderMessage::XLogData(xlog) => {
                        if xlog.wal_start != self.position {
                            return Err(ReplicationError::Gap {
                                expected: self.position,
                                got: xlog.wal_start,
                            });
                        }
                        self.writer
                            .write(self.timeline, xlog.wal_start, &xlog.data)?;
                        self.position = self.position.checked_add(xlog.data.len() as u64).ok_or(
                            ReplicationError::Gap {
                                expected: self.position,
                                got: xlog.wal_start,
                            },
                        )?;
                    }
                    WalSenderMessage::PrimaryKeepalive(keepalive) => {
                        if keepalive.reply_requested && !stopping {
                            self.send_status()?;
                            self.conn.flush().await?;
                        }
                    }
                },
                // The server ended a historic timeline (it was promoted), or answered our CopyDone.
                BackendMessage::CopyDone => {
                    if !stopping {
                        self.conn.send_copy_done();
                        self.conn.flush().await?;
                    }
                    return self.after_copy(cancel).await;
                }
                // Server shutdown: CommandComplete without CopyDone, then the socket closes.
                BackendMessage::CommandComplete { .. } => {
                    self.writer.flush()?;
                    return Ok(Outcome::Ended(StreamEnd::ServerShutdown {
                        position: self.position,
                    }));
                }
                BackendMessage::ErrorResponse(e) => return Err(self.drain_error(e).await),
                other => return Err(ConnectionError::unexpected("WAL data", &other).into()),
            }
        }
    }

    fn stop_reached(&self, stop_at: Option<Lsn>) -> bool {
        stop_at.is_some_and(|stop| self.position >= stop)
    }

    /// After both sides sent CopyDone: either a next-timeline result set or just the end.
    async fn after_copy(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<Outcome, ReplicationError> {
        self.writer.flush()?;
        match self.conn.read_message().await? {
            BackendMessage::RowDescription { .. } => self.read_next_timeline().await,
            BackendMessage::CommandComplete { .. } => {
                self.read_until_ready().await?;
                let position = self.position;
                Ok(Outcome::Ended(if cancel.is_cancelled() {
                    StreamEnd::Cancelled { position }
                } else {
                    StreamEnd::ReachedStop { position }
                }))
            }
            BackendMessage::ErrorResponse(e) => Err(self.drain_error(e).await),
            other => Err(ConnectionError::unexpected("the end of streaming", &other).into()),
        }
    }

    /// The `next_tli`, `next_tli_startpos` row after a timeline's end; RowDescription was read.
    async fn read_next_timeline(&mut self) -> Result<Outcome, ReplicationError> {
        let values = match self.conn.read_message().await? {
            BackendMessage::DataRow { values } => values,
            other => return Err(ConnectionError::unexpected("the next timeline", &other).into()),
        };
        let text = |i: usize| {
            values
                .get(i)
                .cloned()
                .flatten()
                .and_then(|v| String::from_utf8(v.to_vec()).ok())
                .ok_or_else(|| ProtocolError::malformed("next timeline", "missing column"))
        };
        let timeline = text(0)?
            .parse()
            .map_err(|_| ProtocolError::malformed("next timeline", "bad next_tli"))?;
        let start: Lsn = text(1)?
            .parse()
            .map_err(|_| ProtocolError::malformed("next timeline", "bad next_tli_startpos"))?;
        self.read_until_ready().await?;
        Ok(Outcome::NextTimeline { timeline, start })
    }

    async fn read_until_ready(&mut self) -> Result<(), ReplicationError> {
        loop {
            match self.conn.read_message().await? {
                BackendMessage::ReadyForQuery => return Ok(()),
                BackendMessage::CommandComplete { .. } | BackendMessage::CopyData(_) => {}
                BackendMessage::ErrorResponse(e) => return Err(self.drain_error(e).await),
                other => return Err(ConnectionError::unexpected("ReadyForQuery", &other).into()),
            }
        }
    }

    /// After an ErrorResponse the server sends ReadyForQuery; consume it so the session could be
    /// reused, but report the error whatever happens.
    async fn drain_error(
        &mut self,
        error: crate::proto::server_error::ServerError,
    ) -> ReplicationError {
        if !error.is_fatal() {
            while let Ok(message) = self.conn.read_message().await {
                if matches!(message, BackendMessage::ReadyForQuery) {
                    break;
                }
            }
        }
        ReplicationError::Connection(ConnectionError::Server(error))
    }

    fn send_status(&mut self) -> Result<(), ReplicationError> {
        let flush = if self.options.report_flush {
            self.writer.flush()?;
            self.flushed = self.position;
            self.flushed
        } else {
            Lsn::INVALID
        };
        let update = StandbyStatusUpdate {
            write: self.position,
            flush,
            apply: Lsn::INVALID,
            client_time: PgTimestamp::now(),
            // We answer the server's keepalives; we never need it to answer ours.
            reply_requested: false,
        };
        let mut payload = bytes::BytesMut::with_capacity(34);
        update.encode(&mut payload);
        self.conn.send_copy_data(&payload)?;
        Ok(())
    }
}
