//! Simple-query round trips and the typed replication commands built on them.

use bytes::Bytes;

use super::{Connection, ConnectionError};
use crate::ids::{SystemId, TimelineId};
use crate::lsn::Lsn;
use crate::proto::backend::BackendMessage;
use crate::proto::command::ReplicationCommand;

/// One result set, values as the server sent them (replication commands answer in text).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResultSet {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<Bytes>>>,
}

impl ResultSet {
    /// The only row, or an error naming the command.
    pub fn single_row(&self, command: &'static str) -> Result<&[Option<Bytes>], ConnectionError> {
        match self.rows.as_slice() {
            [row] => Ok(row),
            rows => Err(ConnectionError::Unexpected {
                expected: "one row",
                got: format!("{} rows from {command}", rows.len()),
            }),
        }
    }

    /// Column `name` of `row` as text; `None` for NULL.
    pub fn text<'r>(
        &self,
        row: &'r [Option<Bytes>],
        name: &str,
    ) -> Result<Option<&'r str>, ConnectionError> {
        let index = self.columns.iter().position(|c| c == name).ok_or_else(|| {
            ConnectionError::Unexpected {
                expected: "a result column",
                got: format!("no column `{name}` in {:?}", self.columns),
            }
        })?;
        match row.get(index) {
            Some(Some(value)) => {
                std::str::from_utf8(value)
                    .map(Some)
                    .map_err(|_| ConnectionError::Unexpected {
                        expected: "UTF-8 text",
                        got: format!("invalid UTF-8 in column `{name}`"),
                    })
            }
            Some(None) => Ok(None),
            None => Err(ConnectionError::Unexpected {
                expected: "a value per column",
                got: format!("short row without `{name}`"),
            }),
        }
    }

    /// Column `name` of `row`, required and parsed.
    pub fn parse<T: std::str::FromStr>(
        &self,
        row: &[Option<Bytes>],
        name: &str,
    ) -> Result<T, ConnectionError> {
        let text = self
            .text(row, name)?
            .ok_or_else(|| ConnectionError::Unexpected {
                expected: "a value",
                got: format!("NULL in column `{name}`"),
            })?;
        text.parse().map_err(|_| ConnectionError::Unexpected {
            expected: "a parsable value",
            got: format!("`{text}` in column `{name}`"),
        })
    }
}

/// The answer to IDENTIFY_SYSTEM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentifySystem {
    pub system_id: SystemId,
    pub timeline: TimelineId,
    /// The primary's flush position, or a standby's replay/receive horizon.
    pub xlogpos: Lsn,
}

/// A physical slot as READ_REPLICATION_SLOT reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotInfo {
    pub restart_lsn: Option<Lsn>,
    pub restart_timeline: Option<TimelineId>,
}

/// Most bytes of row data one simple query may return. The replication commands answer with a
/// row or a few (a timeline history file is the largest, a few KiB); the cap keeps a server that
/// sends rows without end from filling memory.
pub const MAX_RESULT_BYTES: usize = 32 * 1024 * 1024;

impl Connection {
    /// Sends one query and collects its result sets up to ReadyForQuery. An ErrorResponse is
    /// returned as `ConnectionError::Server` after draining, so the session stays usable.
    /// More than [`MAX_RESULT_BYTES`] of rows is an error.
    pub async fn simple_query(&mut self, text: &str) -> Result<Vec<ResultSet>, ConnectionError> {
        self.send_query(text)?;
        self.flush().await?;
        let mut sets = Vec::new();
        let mut current: Option<ResultSet> = None;
        let mut error = None;
        let mut result_bytes = 0usize;
        loop {
            let message = self.read_message().await?;
            if let BackendMessage::DataRow { values } = &message {
                // What the rows hold on to: the values and the slots for them (NULLs too).
                let slots = values.len() * std::mem::size_of::<Option<Bytes>>();
                result_bytes += slots + values.iter().flatten().map(Bytes::len).sum::<usize>();
                if result_bytes > MAX_RESULT_BYTES {
                    return Err(ConnectionError::Unexpected {
                        expected: "a result of at most 32 MiB",
                        got: format!("more rows than that in answer to `{text}`"),
                    });
                }
            }
            match message {
                BackendMessage::RowDescription { columns } => {
                    current = Some(ResultSet {
                        columns,
                        rows: Vec::new(),
                    });
                }
                BackendMessage::DataRow { values } => match current.as_mut() {
                    Some(set) => set.rows.push(values),
                    None => {
                        return Err(ConnectionError::Unexpected {
                            expected: "RowDescription before DataRow",
                            got: "DataRow".into(),
                        })
                    }
                },
                // Tags differ by version (`SELECT` vs the command name): never depend on them.
                BackendMessage::CommandComplete { .. } => sets.extend(current.take()),
                BackendMessage::EmptyQueryResponse => {}
                BackendMessage::ErrorResponse(e) => error = Some(e),
                BackendMessage::ReadyForQuery => {
                    return match error {
                        Some(e) => Err(ConnectionError::Server(e)),
                        None => Ok(sets),
                    }
                }
                other => return Err(ConnectionError::unexpected("a query result", &other)),
            }
        }
    }

    /// UPLOAD_MANIFEST (17+): the server answers CopyInResponse, takes the manifest as COPY
    /// data, and checks it (format, checksum, system identifier) before CommandComplete.
    pub async fn upload_manifest(&mut self, manifest: &[u8]) -> Result<(), ConnectionError> {
        self.send_query(&ReplicationCommand::UploadManifest.render())?;
        self.flush().await?;
        match self.read_message().await? {
            BackendMessage::CopyInResponse => {}
            BackendMessage::ErrorResponse(e) => {
                self.drain_until_ready().await?;
                return Err(ConnectionError::Server(e));
            }
            other => return Err(ConnectionError::unexpected("CopyInResponse", &other)),
        }
        for chunk in manifest.chunks(64 << 10) {
            self.send_copy_data(chunk)?;
        }
        self.send_copy_done();
        self.flush().await?;
        let mut error = None;
        loop {
            match self.read_message().await? {
                BackendMessage::ErrorResponse(e) => error = Some(e),
                BackendMessage::ReadyForQuery => {
                    return error.map_or(Ok(()), |e| Err(ConnectionError::Server(e)))
                }
                BackendMessage::CommandComplete { .. }
                | BackendMessage::RowDescription { .. }
                | BackendMessage::DataRow { .. } => {}
                other => {
                    return Err(ConnectionError::unexpected(
                        "UPLOAD_MANIFEST's answer",
                        &other,
                    ))
                }
            }
        }
    }

    async fn drain_until_ready(&mut self) -> Result<(), ConnectionError> {
        while !matches!(self.read_message().await?, BackendMessage::ReadyForQuery) {}
        Ok(())
    }

    pub async fn execute(
        &mut self,
        command: &ReplicationCommand<'_>,
    ) -> Result<Vec<ResultSet>, ConnectionError> {
        self.simple_query(&command.render()).await
    }

    async fn single_set(
        &mut self,
        command: &ReplicationCommand<'_>,
        name: &'static str,
    ) -> Result<ResultSet, ConnectionError> {
        self.execute(command)
            .await?
            .into_iter()
            .next()
            .ok_or(ConnectionError::Unexpected {
                expected: "a result set",
                got: format!("none from {name}"),
            })
    }

    pub async fn identify_system(&mut self) -> Result<IdentifySystem, ConnectionError> {
        let set = self
            .single_set(&ReplicationCommand::IdentifySystem, "IDENTIFY_SYSTEM")
            .await?;
        let row = set.single_row("IDENTIFY_SYSTEM")?;
        Ok(IdentifySystem {
            system_id: set.parse(row, "systemid")?,
            // int4 before 16, int8 after: parsed from text either way.
            timeline: set.parse(row, "timeline")?,
            xlogpos: set.parse(row, "xlogpos")?,
        })
    }

    /// `SHOW name` over the replication connection.
    pub async fn show(&mut self, name: &str) -> Result<String, ConnectionError> {
        let set = self
            .single_set(&ReplicationCommand::Show(name), "SHOW")
            .await?;
        let row = set.single_row("SHOW")?;
        let column = set.columns.first().cloned().unwrap_or_default();
        set.text(row, &column)?
            .map(str::to_owned)
            .ok_or(ConnectionError::Unexpected {
                expected: "a setting",
                got: format!("NULL for `{name}`"),
            })
    }

    /// `wal_segment_size` in bytes (`SHOW` prints it with a unit, e.g. `16MB`).
    pub async fn wal_segment_size(&mut self) -> Result<u64, ConnectionError> {
        let text = self.show("wal_segment_size").await?;
        // PostgreSQL allows powers of two from 1 MB to 1 GB; anything else would break the
        // segment arithmetic (a 0 divides by zero).
        crate::units::parse_size(&text)
            .ok()
            .filter(|size| size.is_power_of_two() && (1 << 20..=1 << 30).contains(size))
            .ok_or(ConnectionError::Unexpected {
                expected: "a power of two from 1MB to 1GB",
                got: format!("wal_segment_size `{text}`"),
            })
    }

    /// The history file of `timeline`: its file name and raw content.
    pub async fn timeline_history(
        &mut self,
        timeline: TimelineId,
    ) -> Result<(String, Bytes), ConnectionError> {
        let set = self
            .single_set(
                &ReplicationCommand::TimelineHistory(timeline),
                "TIMELINE_HISTORY",
            )
            .await?;
        let row = set.single_row("TIMELINE_HISTORY")?;
        let filename: String = set.parse(row, "filename")?;
        let content = row.get(1).cloned().flatten().unwrap_or_default();
        Ok((filename, content))
    }

    pub async fn create_physical_slot(
        &mut self,
        name: &str,
        temporary: bool,
    ) -> Result<(), ConnectionError> {
        self.execute(&ReplicationCommand::CreatePhysicalSlot {
            name,
            temporary,
            reserve_wal: true,
        })
        .await
        .map(drop)
    }

    pub async fn drop_slot(&mut self, name: &str) -> Result<(), ConnectionError> {
        self.execute(&ReplicationCommand::DropSlot { name, wait: false })
            .await
            .map(drop)
    }

    /// READ_REPLICATION_SLOT (15+): `None` when no such slot exists.
    pub async fn read_slot(&mut self, name: &str) -> Result<Option<SlotInfo>, ConnectionError> {
        let set = self
            .single_set(&ReplicationCommand::ReadSlot(name), "READ_REPLICATION_SLOT")
            .await?;
        let row = set.single_row("READ_REPLICATION_SLOT")?;
        if set.text(row, "slot_type")?.is_none() {
            return Ok(None);
        }
        let restart_lsn = set
            .text(row, "restart_lsn")?
            .map(str::parse)
            .transpose()
            .map_err(|_| ConnectionError::Unexpected {
                expected: "an LSN",
                got: "bad restart_lsn".into(),
            })?;
        let restart_timeline = set
            .text(row, "restart_tli")?
            .map(str::parse)
            .transpose()
            .map_err(|_| ConnectionError::Unexpected {
                expected: "a timeline",
                got: "bad restart_tli".into(),
            })?;
        Ok(Some(SlotInfo {
            restart_lsn,
            restart_timeline,
        }))
    }
}
