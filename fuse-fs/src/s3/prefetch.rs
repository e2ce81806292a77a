//! Sequential reads served ahead of the reader, from the mount's shared
//! blocks.
//!
//! Each open file has a [`Prefetcher`]: the reader's position, its window
//! (bytes requested ahead of it) and the blocks of that window, taken from
//! the mount's [`Blocks`](super::blocks::Blocks) — so readers of one object
//! version fetch each block once between them. While reads stay sequential
//! the window doubles up to a maximum, and read-ahead asks for a part
//! (`window / 2`, at most `--part-size`) at a time, so a long read keeps
//! several GETs in flight. A read inside the window (a small seek) is
//! served from it; a read elsewhere drops the window and is random access:
//! it takes blocks already in memory if they cover it; a read that covers a
//! whole block takes its blocks through the shared blocks (one fetch
//! between all readers, written to the disk cache: in a class, the reads
//! at the front of the pack come to whichever handle's readahead gets there
//! first, so each handle sees a stream with holes); a smaller one fetches
//! only a small range (`random_read_size`) for itself, so random access
//! does not download data nobody reads.
//!
//! The kernel's readahead sends a sequential reader's reads several at a
//! time (up to `kernel_readahead` bytes ahead of it), and the server handles
//! them in whatever order they reach the handle: on a busy node a read can
//! overtake the ones in front of it, or lag behind, by most of that
//! distance. Those reads belong to the stream. One up to `kernel_readahead`
//! past it (also before the first read of a new handle) takes the blocks up
//! to it as read-ahead. The blocks up to `kernel_readahead` behind the
//! reader stay in the shared blocks (kept for it, which memory pressure can
//! still undo), and a read that lags behind the held blocks is served on
//! the side from them (else from the disk cache, or its exact range),
//! leaving the stream as it is. Taken for random reads, such reads cost a
//! GET of their own each, never shared with the class and never written to
//! the disk cache (blocks read only that way were missing from it), and a
//! late read whose block had just been let go fetched it again: a 24 MiB
//! object read with `dd bs=1M` cost 24–29 MiB of GETs.
//!
//! Blocks keep the body chunks as the HTTP client handed them over, and a
//! read returns [`Pieces`] (slices of those chunks): bytes are copied once,
//! into the kernel's reply — at hundreds of MiB/s an extra copy and the page
//! faults of fresh buffers cost a third of the daemon's CPU, which on a
//! small node the S3 server needs.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use super::blocks::{Block, Pieces, Reader};
use super::error::ObjectError;
use super::memory::Reservation;
use super::store::ObjectStore;

/// Tuning of the prefetcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefetchConfig {
    /// Largest single ranged GET.
    pub part_size: u64,
    /// Bytes requested ahead when a sequential read starts.
    pub initial_window: u64,
    /// Most bytes requested ahead of one reader.
    pub max_window: u64,
    /// Total bytes of all read buffers of the mount.
    pub max_memory: u64,
    /// Smallest GET of a random read.
    pub random_read_size: u64,
    /// Attempts of one GET whose body breaks mid-stream.
    pub max_attempts: u32,
    /// Bytes per shared block (see [`super::blocks`]).
    pub block_size: u64,
    /// How far ahead of the reader the kernel's readahead sends reads (the
    /// mount's readahead): reads that far out of order are one stream.
    pub kernel_readahead: u64,
}

impl Default for PrefetchConfig {
    fn default() -> Self {
        Self {
            part_size: 8 << 20,
            initial_window: 1 << 20,
            max_window: 64 << 20,
            max_memory: 512 << 20,
            random_read_size: 128 << 10,
            max_attempts: 5,
            block_size: 1 << 20,
            kernel_readahead: 4 << 20,
        }
    }
}

impl PrefetchConfig {
    /// The shape of the mount's shared blocks for these settings.
    pub fn blocks(&self) -> super::blocks::BlockConfig {
        super::blocks::BlockConfig {
            block_size: self.block_size,
            part_size: self.part_size,
            max_attempts: self.max_attempts,
        }
    }
}

/// The bytes of the last random read, fetched for this reader alone.
#[derive(Debug)]
struct Scattered {
    range: Range<u64>,
    data: Pieces,
    _memory: Reservation,
}

/// The read state of one open file.
#[derive(Debug)]
pub struct Prefetcher<S> {
    size: u64,
    cfg: PrefetchConfig,
    /// Consecutive blocks: the one before the reader's, up to the end of
    /// its window.
    held: VecDeque<Arc<Block>>,
    scattered: Option<Scattered>,
    window: u64,
    /// Offset right after the previous read.
    next_seq: u64,
    /// The last read was not where the previous one ended.
    random: bool,
    /// Last: fields drop in order, and the blocks above must be let go
    /// before the reader unregisters, so that none is kept for it.
    reader: Reader<S>,
}

impl<S> Prefetcher<S> {
    pub fn new(reader: Reader<S>, cfg: PrefetchConfig) -> Self {
        let window = cfg.initial_window.max(1);
        Self {
            size: reader.object().size,
            reader,
            cfg,
            held: VecDeque::new(),
            scattered: None,
            window,
            next_seq: 0,
            random: false,
        }
    }

    /// The object version this handle reads.
    pub fn object(&self) -> &super::blocks::ObjectVersion {
        self.reader.object()
    }

    /// Bytes requested ahead of the reader right now.
    pub fn window(&self) -> u64 {
        self.window
    }

    /// Blocks this reader holds (fetching or ready).
    pub fn held_blocks(&self) -> usize {
        self.held.len()
    }

    fn block_size(&self) -> u64 {
        self.reader.block_size()
    }

    fn covers(&self, offset: u64) -> bool {
        match (self.held.front(), self.held.back()) {
            (Some(f), Some(b)) => f.range().start <= offset && offset < b.range().end,
            _ => false,
        }
    }

    /// Whether `offset..end` covers a whole block (or the last one whole).
    fn spans_a_block(&self, offset: u64, end: u64) -> bool {
        let first = offset.div_ceil(self.block_size()) * self.block_size();
        first < end && (first + self.block_size()).min(self.size) <= end
    }

    /// How far ahead of the stream a read still belongs to it.
    fn reach(&self) -> u64 {
        self.window.max(self.cfg.kernel_readahead)
    }

    /// Whether `offset` is past the held blocks of a sequential reader (or
    /// past where a reader holding none is), by less than [`Self::reach`].
    fn just_ahead(&self, offset: u64) -> bool {
        let (start, end) = match (self.held.front(), self.held_end()) {
            (Some(f), Some(end)) => (f.range().start, end),
            _ => (self.next_seq, self.next_seq),
        };
        !self.random && start <= offset && offset < end + self.reach()
    }

    /// Whether `offset` is behind the held blocks of a sequential reader by
    /// less than the kernel's readahead: one of its reads, arriving late.
    fn lagging(&self, offset: u64) -> bool {
        self.held.front().is_some_and(|f| {
            !self.random
                && offset < f.range().start
                && f.range().start - offset <= self.cfg.kernel_readahead
        })
    }

    /// The offset right after the held blocks.
    fn held_end(&self) -> Option<u64> {
        self.held.back().map(|b| b.range().end)
    }

    fn part_len(&self) -> u64 {
        (self.window / 2).clamp(self.cfg.random_read_size.max(1), self.cfg.part_size.max(1))
    }
}

impl<S: ObjectStore> Prefetcher<S> {
    /// Reads up to `len` bytes at `offset` (fewer only at the end of the object).
    pub async fn read(&mut self, offset: u64, len: u64) -> Result<bytes::Bytes, ObjectError> {
        Ok(self.read_pieces(offset, len).await?.to_bytes())
    }

    /// As [`Self::read`], without joining the pieces.
    pub async fn read_pieces(&mut self, offset: u64, len: u64) -> Result<Pieces, ObjectError> {
        if offset >= self.size || len == 0 {
            return Ok(Pieces::default());
        }
        let end = (offset + len).min(self.size);
        let sequential = offset == self.next_seq;
        if let Some(s) = &self.scattered {
            if s.range.start <= offset && end <= s.range.end {
                let from = (offset - s.range.start) as usize;
                let out = s.data.slice(from, from + (end - offset) as usize);
                self.next_seq = end;
                return Ok(out);
            }
        }
        let bs = self.block_size();
        if self.lagging(offset) {
            return self.read_aside(offset, end).await;
        }
        // Kernel readahead runs several reads at once, and one may arrive
        // before those in front of it: a read just past the held blocks
        // goes on with the stream (the blocks up to it are taken below),
        // it is no random read.
        let stream = self.covers(offset) || self.just_ahead(offset);
        if stream {
            // Blocks wholly behind this read and the previous one are done,
            // but the one just before is kept: reads may arrive slightly out
            // of order.
            let behind = offset.min(self.next_seq);
            while self.held.len() > 1 && self.held[1].range().end <= behind {
                let done = self.held.pop_front();
                self.reader.release(done);
            }
        } else {
            self.reader.release(self.held.drain(..));
            if !sequential {
                self.random = true;
                self.window = self.cfg.initial_window.max(1);
            }
        }
        if sequential {
            // Each read that continues the previous one widens the window.
            self.random = false;
            if offset > 0 {
                self.window = (self.window * 2).min(self.cfg.max_window.max(1));
            }
        }
        let wanted = offset / bs..(end - 1) / bs + 1;
        if self.held.is_empty() && self.random {
            match self.reader.existing(wanted.clone()) {
                Some(blocks) => self.held.extend(blocks),
                // As large as a block: the blocks, through the shared map.
                None if self.spans_a_block(offset, end) => {
                    self.held.extend(self.reader.acquire(wanted.clone(), true))
                }
                None => {
                    tracing::debug!(offset, len, "random read");
                    return self.read_scattered(offset, end).await;
                }
            }
        }
        // The blocks the reader waits for now (for a stream that holds none
        // yet, from where it is: reads before this one are on their way).
        let from = if stream {
            self.next_seq / bs
        } else {
            wanted.start
        };
        let first = self.held_end().map_or(from, |e| e.div_ceil(bs));
        if first < wanted.end {
            self.held
                .extend(self.reader.acquire(first..wanted.end, true));
        }
        if !self.random {
            self.top_up(offset);
        }
        let out = self.collect(offset, end).await;
        self.next_seq = end;
        // Reads the kernel sent before this one may still arrive: the
        // blocks up to its readahead behind stay in memory for them (kept
        // for a reader, not held: memory pressure can still let them go).
        let behind = if self.random {
            0
        } else {
            self.cfg.kernel_readahead
        };
        self.reader.advance(end.saturating_sub(behind));
        out
    }

    /// A read that lags behind the stream: from the blocks still in memory
    /// if they cover it, else from the disk cache or a GET of exactly its
    /// range; the stream (held blocks, window, position) stays as it is.
    async fn read_aside(&mut self, offset: u64, end: u64) -> Result<Pieces, ObjectError> {
        let bs = self.block_size();
        let Some(blocks) = self.reader.existing(offset / bs..(end - 1) / bs + 1) else {
            tracing::debug!(offset, len = end - offset, "late read of a stream");
            return self.reader.scattered(offset..end).await;
        };
        let out = gather(&blocks, offset, end).await;
        self.reader.release(blocks);
        out.map_err(|(_, e)| e)
    }

    /// A random read no block in memory covers: a small range, fetched for
    /// this reader alone and kept until its next random read.
    async fn read_scattered(&mut self, offset: u64, end: u64) -> Result<Pieces, ObjectError> {
        self.scattered = None;
        let stop = (offset + (end - offset).max(self.cfg.random_read_size)).min(self.size);
        let memory = self.reader.blocks().limiter().reserve_forced(stop - offset);
        let data = self.reader.scattered(offset..stop).await?;
        let out = data.slice(0, (end - offset) as usize);
        self.scattered = Some(Scattered {
            range: offset..offset + data.len() as u64,
            data,
            _memory: memory,
        });
        self.next_seq = end;
        self.reader.advance(end);
        Ok(out)
    }

    /// Takes blocks, a part at a time, until the window ahead of `offset`
    /// is requested (or memory runs out).
    fn top_up(&mut self, offset: u64) {
        let bs = self.block_size();
        loop {
            let at = self.held_end().unwrap_or(offset);
            if at >= self.size || at.saturating_sub(offset) >= self.window {
                return;
            }
            let first = at.div_ceil(bs);
            let n = self.part_len().div_ceil(bs).max(1);
            let got = self.reader.acquire(first..first + n, false);
            if got.is_empty() {
                return;
            }
            self.held.extend(got);
        }
    }

    async fn collect(&mut self, offset: u64, end: u64) -> Result<Pieces, ObjectError> {
        let held = self.held.make_contiguous();
        match gather(held, offset, end).await {
            Ok(out) => Ok(out),
            Err((i, e)) => {
                // Forget this block and everything after it, so the next
                // read asks again.
                self.reader.release(self.held.drain(i..));
                Err(e)
            }
        }
    }
}

/// The bytes `offset..end` from `blocks` (consecutive), waiting for the
/// ones still being fetched; on an error, the index of the failed block.
async fn gather(
    blocks: &[Arc<Block>],
    offset: u64,
    end: u64,
) -> Result<Pieces, (usize, ObjectError)> {
    let mut out = Pieces::default();
    for (i, block) in blocks.iter().enumerate() {
        let range = block.range().clone();
        if range.end <= offset {
            continue;
        }
        if range.start >= end {
            break;
        }
        let data = block.data().await.map_err(|e| (i, e))?;
        let len = data.len();
        let from = (offset.max(range.start) - range.start) as usize;
        let to = ((end.min(range.end) - range.start) as usize).min(len);
        out.append(data.slice(from.min(to), to));
        if (len as u64) < range.end - range.start {
            // The object shrank under us: stop at what exists.
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
