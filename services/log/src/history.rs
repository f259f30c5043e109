//! Reading records older than the store's in-memory window, straight from the records file.
//!
//! The file is plain JSON lines with no index of its own, so the store keeps a sparse one in
//! memory, built when the store opens and extended on every append: the byte offset at which
//! every [`BLOCK_RECORDS`]-th record starts (8 bytes per block), and for each service the blocks
//! that hold at least one of its records (8 bytes per service per block it appears in). A read
//! seeks to the block holding the newest record it wants and walks the blocks backwards, reading
//! each one forwards, until it has enough records or reaches the first. A read for one service
//! visits only that service's blocks, so `GET /log?service=rare` reads a few blocks however
//! large the file, instead of all of it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::record::Record;

/// Records per block of the index; a read of one old record looks at at most this many lines.
/// Small enough that a read for a rare service, one block per record found, reads little; large
/// enough that the index of 10 million records stays well under a megabyte per service.
pub const BLOCK_RECORDS: u64 = 128;

/// A stored record and its sequence number: its 1-based position in the file, which never
/// changes. `GET /log?before=SEQ` pages backwards with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Numbered {
    pub seq: u64,
    #[serde(flatten)]
    pub record: Record,
}

/// Where each block of records starts in the file, and which blocks hold each service's records.
#[derive(Debug)]
pub struct BlockIndex {
    block_records: u64,
    /// `starts[b]` is the offset of record `b * block_records + 1`.
    starts: Vec<u64>,
    /// For each service, the blocks holding at least one of its records, in increasing order.
    services: HashMap<String, Vec<u64>>,
    /// The service and block of the record noted last: a record of the same service in the same
    /// block (a burst of one service's records) changes nothing, and is not looked up.
    last_noted: (String, u64),
}

impl BlockIndex {
    pub fn new(block_records: u64) -> BlockIndex {
        assert!(block_records > 0, "a block holds at least one record");
        BlockIndex {
            block_records,
            starts: Vec::new(),
            services: HashMap::new(),
            last_noted: (String::new(), u64::MAX),
        }
    }

    /// Notes that record `seq` starts at byte `offset`. Records are noted in order.
    pub fn note(&mut self, seq: u64, offset: u64) {
        if (seq - 1).is_multiple_of(self.block_records) {
            self.starts.push(offset);
        }
    }

    /// Notes that record `seq` is from `service`. Records are noted in order.
    pub fn note_service(&mut self, seq: u64, service: &str) {
        let block = (seq - 1) / self.block_records;
        let (last_service, last_block) = &mut self.last_noted;
        if *last_block == block && last_service == service {
            return;
        }
        // Kept in the same buffer: no allocation once it holds the longest name.
        last_service.clear();
        last_service.push_str(service);
        *last_block = block;
        match self.services.get_mut(service) {
            Some(blocks) => {
                if blocks.last() != Some(&block) {
                    blocks.push(block);
                }
            }
            None => {
                self.services.insert(service.to_owned(), vec![block]);
            }
        }
    }

    /// Notes the `records` whole lines in `lines`, the first being record `first_seq` at byte
    /// `offset`. Only a group that crosses into a new block looks at its bytes.
    pub fn note_lines(&mut self, first_seq: u64, records: u64, offset: u64, lines: &[u8]) {
        let end = first_seq + records;
        let mut next_start = (first_seq - 1).div_ceil(self.block_records) * self.block_records + 1;
        if next_start >= end {
            return;
        }
        let line_starts = std::iter::once(0).chain(
            lines
                .iter()
                .enumerate()
                .filter(|&(_, &byte)| byte == b'\n')
                .map(|(at, _)| at + 1),
        );
        for (seq, start) in (first_seq..end).zip(line_starts) {
            if seq == next_start {
                self.starts.push(offset + start as u64);
                next_start += self.block_records;
                if next_start >= end {
                    return;
                }
            }
        }
    }

    /// The newest block at or before `block` that holds records of `service` (any block, when
    /// `None`).
    fn at_or_before(&self, service: Option<&str>, block: u64) -> Option<u64> {
        let Some(service) = service else {
            return Some(block);
        };
        let blocks = self.services.get(service)?;
        let after = blocks.partition_point(|&b| b <= block);
        after.checked_sub(1).map(|i| blocks[i])
    }

    /// The oldest block at or after `block` that holds records of `service` (any block, when
    /// `None`).
    fn at_or_after(&self, service: Option<&str>, block: u64) -> Option<u64> {
        let Some(service) = service else {
            return Some(block);
        };
        let blocks = self.services.get(service)?;
        blocks.get(blocks.partition_point(|&b| b < block)).copied()
    }

    /// Bytes of memory the index holds, roughly, for the benchmarks' account of what grows.
    pub fn heap_bytes(&self) -> usize {
        self.starts.capacity() * 8
            + self.last_noted.0.capacity()
            + self
                .services
                .iter()
                .map(|(name, blocks)| name.capacity() + blocks.capacity() * 8 + 48)
                .sum::<usize>()
    }
}

/// Which of the file's records a read wants: numbered above `lower` and below `upper`, from
/// `service` and of `trace` when given, and `admitted` (which checks service, level and trace
/// again on the parsed record; `service` and `trace` only let the read skip blocks and lines
/// without parsing them).
pub struct Wanted<'a, F> {
    pub lower: u64,
    pub upper: u64,
    pub service: Option<&'a str>,
    pub trace: Option<&'a str>,
    pub admitted: F,
    pub limit: usize,
}

/// Up to `want.limit` of the newest records `want` selects, oldest first, read from the file at
/// `path`. Every record below `want.upper` must be complete in the file and noted in `index`.
/// Blocking: run it off the async workers.
pub fn read_before<F: Fn(&Record) -> bool>(
    path: &Path,
    index: &Mutex<BlockIndex>,
    want: Wanted<'_, F>,
) -> io::Result<Vec<Numbered>> {
    let Wanted {
        lower,
        upper,
        service,
        trace,
        admitted,
        limit,
    } = want;
    let mut newest_first = Vec::new();
    if lower.saturating_add(1) >= upper || limit == 0 {
        return Ok(newest_first);
    }
    let mut file = RecordReader::open(path, index)?;
    let block_records = file.block_records;
    let mut next = lock(index).at_or_before(service, (upper - 2) / block_records);
    while let Some(block) = next {
        // Every record of this block and older ones is at or below `lower`.
        if (block + 1) * block_records <= lower {
            break;
        }
        let first = file.seek_block(block)?;
        let last = (first + block_records - 1).min(upper - 1);
        let mut in_block = Vec::new();
        for seq in first..=last {
            if let Some(record) = file.next_if(seq, seq > lower, service, trace)?
                && admitted(&record)
            {
                in_block.push(Numbered { seq, record });
            }
        }
        let missing = limit - newest_first.len();
        let keep_from = in_block.len().saturating_sub(missing);
        newest_first.extend(in_block.drain(keep_from..).rev());
        if newest_first.len() == limit || block == 0 {
            break;
        }
        next = lock(index).at_or_before(service, block - 1);
    }
    newest_first.reverse();
    Ok(newest_first)
}

/// Up to `want.limit` of the oldest records `want` selects, oldest first, read from the file at
/// `path`. Every record below `want.upper` must be complete in the file and noted in `index`.
/// Blocking, like [`read_before`].
pub fn read_after<F: Fn(&Record) -> bool>(
    path: &Path,
    index: &Mutex<BlockIndex>,
    want: Wanted<'_, F>,
) -> io::Result<Vec<Numbered>> {
    let Wanted {
        lower,
        upper,
        service,
        trace,
        admitted,
        limit,
    } = want;
    let mut found = Vec::new();
    if lower.saturating_add(1) >= upper || limit == 0 {
        return Ok(found);
    }
    let mut file = RecordReader::open(path, index)?;
    let block_records = file.block_records;
    let mut next = lock(index).at_or_after(service, lower / block_records);
    // The block the reader stands at the start of, having read the one before it whole: blocks
    // that follow each other in the file are read on without a seek.
    let mut positioned_at = None;
    while let Some(block) = next {
        let first = if positioned_at == Some(block) {
            block * block_records + 1
        } else {
            file.seek_block(block)?
        };
        if first >= upper {
            break;
        }
        let last = (first + block_records - 1).min(upper - 1);
        for seq in first..=last {
            if let Some(record) = file.next_if(seq, seq > lower, service, trace)?
                && admitted(&record)
            {
                found.push(Numbered { seq, record });
                if found.len() == limit {
                    return Ok(found);
                }
            }
        }
        positioned_at = Some(block + 1);
        next = lock(index).at_or_after(service, block + 1);
    }
    Ok(found)
}

/// The records file, read line by line from the start of a block.
struct RecordReader<'a> {
    reader: BufReader<File>,
    line: Vec<u8>,
    path: &'a Path,
    index: &'a Mutex<BlockIndex>,
    block_records: u64,
}

impl<'a> RecordReader<'a> {
    fn open(path: &'a Path, index: &'a Mutex<BlockIndex>) -> io::Result<RecordReader<'a>> {
        Ok(RecordReader {
            reader: BufReader::with_capacity(64 * 1024, File::open(path)?),
            line: Vec::new(),
            path,
            block_records: lock(index).block_records,
            index,
        })
    }

    /// Moves to the first record of `block`; returns its number.
    fn seek_block(&mut self, block: u64) -> io::Result<u64> {
        let start = lock(self.index)
            .starts
            .get(block as usize)
            .copied()
            .ok_or_else(|| {
                io::Error::other(format!(
                    "no index entry for block {block} of {}",
                    self.path.display()
                ))
            })?;
        self.reader.seek(SeekFrom::Start(start))?;
        Ok(block * self.block_records + 1)
    }

    /// Reads the next line, which is record `seq`, and parses it if `wanted` and, when `service`
    /// is given, the line is of that service or its service cannot be told without parsing, and
    /// when `trace` is given, the line holds its bytes somewhere.
    fn next_if(
        &mut self,
        seq: u64,
        wanted: bool,
        service: Option<&str>,
        trace: Option<&str>,
    ) -> io::Result<Option<Record>> {
        self.line.clear();
        self.reader.read_until(b'\n', &mut self.line)?;
        let Some(json) = self.line.strip_suffix(b"\n") else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("record {seq} of {} is cut short", self.path.display()),
            ));
        };
        if !wanted {
            return Ok(None);
        }
        if let Some(service) = service
            && line_service(json).is_some_and(|of_line| of_line != service.as_bytes())
        {
            return Ok(None);
        }
        // A trace id is plain hex, which JSON writes as it is: a line without its bytes is not
        // of that trace (one with them may only mention it, and is checked once parsed).
        if let Some(trace) = trace
            && !json
                .windows(trace.len())
                .any(|window| window == trace.as_bytes())
        {
            return Ok(None);
        }
        serde_json::from_slice(json).map(Some).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("record {seq} of {}: {e}", self.path.display()),
            )
        })
    }
}

/// The service of a stored line, read without parsing it, when the line has the shape the store
/// writes (`{"time":"…","service":"…",…`); `None` when it cannot tell, and the line is parsed.
/// A service name is plain ASCII without quotes or backslashes, so its bytes are the name.
fn line_service(json: &[u8]) -> Option<&[u8]> {
    let rest = json.strip_prefix(br#"{"time":""#)?;
    let time_end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    let rest = rest[time_end..].strip_prefix(br#"","service":""#)?;
    let name_end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    (rest[name_end] == b'"').then(|| &rest[..name_end])
}

/// The index is only ever appended to, so a panic elsewhere cannot leave it inconsistent.
fn lock(index: &Mutex<BlockIndex>) -> std::sync::MutexGuard<'_, BlockIndex> {
    index
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_starts_are_found_inside_groups_of_any_size() {
        // Lines of different lengths, written in groups of 1, 3 and 6 records.
        let lines: Vec<Vec<u8>> = (1..=10u8)
            .map(|n| {
                let mut line = vec![b'x'; n as usize];
                line.push(b'\n');
                line
            })
            .collect();
        let mut offsets = Vec::new();
        let mut at = 0u64;
        for line in &lines {
            offsets.push(at);
            at += line.len() as u64;
        }
        let mut index = BlockIndex::new(4);
        let mut seq = 1;
        for group in [1usize, 3, 6] {
            let bytes = lines[seq - 1..seq - 1 + group].concat();
            index.note_lines(seq as u64, group as u64, offsets[seq - 1], &bytes);
            seq += group;
        }
        // Records 1, 5 and 9 start the blocks.
        assert_eq!(index.starts, vec![offsets[0], offsets[4], offsets[8]]);

        let mut one_by_one = BlockIndex::new(4);
        for (i, offset) in offsets.iter().enumerate() {
            one_by_one.note(i as u64 + 1, *offset);
        }
        assert_eq!(one_by_one.starts, index.starts);
    }
}
