//! Reading records older than the store's in-memory window, straight from the records file.
//!
//! The file is plain JSON lines with no index of its own, so the store keeps a sparse one in
//! memory: the byte offset at which every [`BLOCK_RECORDS`]-th record starts (8 bytes per 1024
//! records). A read seeks to the block holding the newest record it wants and walks the blocks
//! backwards, reading each one forwards, until it has enough records or reaches the first.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::record::Record;

/// Records per block of the index; a read of one old record parses at most this many lines.
pub const BLOCK_RECORDS: u64 = 1024;

/// A stored record and its sequence number: its 1-based position in the file, which never
/// changes. `GET /log?before=SEQ` pages backwards with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Numbered {
    pub seq: u64,
    #[serde(flatten)]
    pub record: Record,
}

/// Where each block of records starts in the file.
#[derive(Debug)]
pub struct BlockIndex {
    block_records: u64,
    /// `starts[b]` is the offset of record `b * block_records + 1`.
    starts: Vec<u64>,
}

impl BlockIndex {
    pub fn new(block_records: u64) -> BlockIndex {
        assert!(block_records > 0, "a block holds at least one record");
        BlockIndex {
            block_records,
            starts: Vec::new(),
        }
    }

    /// Notes that record `seq` starts at byte `offset`. Records are noted in order.
    pub fn note(&mut self, seq: u64, offset: u64) {
        if (seq - 1).is_multiple_of(self.block_records) {
            self.starts.push(offset);
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
}

/// Up to `wanted` of the newest records numbered above `lower` and below `upper` (and
/// `admitted`), oldest first, read from the file at `path`. Every record below
/// `upper` must be complete in the file and noted in `index`. Blocking: run it off the async
/// workers.
pub fn read_before(
    path: &Path,
    index: &Mutex<BlockIndex>,
    lower: u64,
    upper: u64,
    admitted: impl Fn(&Record) -> bool,
    wanted: usize,
) -> io::Result<Vec<Numbered>> {
    let mut newest_first = Vec::new();
    if lower.saturating_add(1) >= upper || wanted == 0 {
        return Ok(newest_first);
    }
    let mut file = RecordReader::open(path, index)?;
    let mut block = (upper - 2) / file.block_records;
    loop {
        let first = file.seek_block(block)?;
        let last = (first + file.block_records - 1).min(upper - 1);
        let mut in_block = Vec::new();
        for seq in first..=last {
            let record = file.next_record(seq)?;
            if seq > lower && admitted(&record) {
                in_block.push(Numbered { seq, record });
            }
        }
        let missing = wanted - newest_first.len();
        let keep_from = in_block.len().saturating_sub(missing);
        newest_first.extend(in_block.drain(keep_from..).rev());
        if newest_first.len() == wanted || first <= lower.saturating_add(1) {
            break;
        }
        block -= 1;
    }
    newest_first.reverse();
    Ok(newest_first)
}

/// Up to `wanted` of the oldest records numbered above `lower` and below `upper` (and
/// `admitted`), oldest first, read from the file at `path`. Every record below
/// `upper` must be complete in the file and noted in `index`. Blocking, like [`read_before`].
pub fn read_after(
    path: &Path,
    index: &Mutex<BlockIndex>,
    lower: u64,
    upper: u64,
    admitted: impl Fn(&Record) -> bool,
    wanted: usize,
) -> io::Result<Vec<Numbered>> {
    let mut found = Vec::new();
    if lower.saturating_add(1) >= upper || wanted == 0 {
        return Ok(found);
    }
    let mut file = RecordReader::open(path, index)?;
    // Records follow each other in the file: one seek, then read on across blocks.
    let first = file.seek_block(lower / file.block_records)?;
    for seq in first..upper {
        let record = file.next_record(seq)?;
        if seq > lower && admitted(&record) {
            found.push(Numbered { seq, record });
            if found.len() == wanted {
                break;
            }
        }
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
            reader: BufReader::new(File::open(path)?),
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

    /// Reads the next line, which is record `seq`.
    fn next_record(&mut self, seq: u64) -> io::Result<Record> {
        self.line.clear();
        self.reader.read_until(b'\n', &mut self.line)?;
        let Some(json) = self.line.strip_suffix(b"\n") else {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("record {seq} of {} is cut short", self.path.display()),
            ));
        };
        serde_json::from_slice(json).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("record {seq} of {}: {e}", self.path.display()),
            )
        })
    }
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
