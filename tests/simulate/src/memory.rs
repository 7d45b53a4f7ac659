//! Heap use per tick. The simulator's global allocator charges every block to the owner
//! that was current when it was allocated (a tick, while its task is polled), recorded in
//! a small header in front of the block, so that a block freed anywhere else (a request
//! body the AWS model drops, a document the store replaces) is still taken off its owner.
//! The AWS model, the store and the recorder run as [`NOBODY`]: what they keep is the
//! simulated world's, not a tick's.

use std::alloc::{GlobalAlloc, Layout};

use mimalloc::MiMalloc as System;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{Context, Poll};

/// Room in front of every block for its owner; blocks aligned beyond it get their
/// alignment instead.
const HEADER: usize = 16;
/// Owners tracked at once; a tick takes the slot of its sequence number.
const SLOTS: usize = 4096;

/// The owner of what is not charged to any tick.
pub const NOBODY: Owner = Owner(0);

static LIVE: [AtomicI64; SLOTS] = [const { AtomicI64::new(0) }; SLOTS];
static PEAK: [AtomicI64; SLOTS] = [const { AtomicI64::new(0) }; SLOTS];

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// Whom allocations are charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner(usize);

impl Owner {
    /// The owner for the `sequence`-th tick, its counts starting from nothing.
    pub fn tick(sequence: usize) -> Self {
        let slot = 1 + sequence % (SLOTS - 1);
        LIVE[slot].store(0, Ordering::Relaxed);
        PEAK[slot].store(0, Ordering::Relaxed);
        Owner(slot)
    }

    /// The most this owner held at once, in bytes.
    pub fn peak_bytes(self) -> u64 {
        PEAK[self.0].load(Ordering::Relaxed).max(0) as u64
    }

    /// Runs `work` with its allocations charged to this owner.
    pub fn run<R>(self, work: impl FnOnce() -> R) -> R {
        let before = CURRENT.with(|current| current.replace(self.0));
        let result = work();
        CURRENT.with(|current| current.set(before));
        result
    }

    /// `future`, every poll of it charged to this owner.
    pub fn charge<F: Future>(self, future: F) -> Charged<F> {
        Charged {
            owner: self,
            future: Box::pin(future),
        }
    }
}

/// A future whose polls are charged to one owner (see [`Owner::charge`]).
pub struct Charged<F> {
    owner: Owner,
    future: Pin<Box<F>>,
}

impl<F: Future> Future for Charged<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let owner = self.owner;
        owner.run(|| self.future.as_mut().poll(cx))
    }
}

/// The system allocator, counting per owner.
pub struct Counting;

fn with_header(layout: Layout) -> Option<(Layout, usize)> {
    let offset = layout.align().max(HEADER);
    let size = layout.size().checked_add(offset)?;
    Layout::from_size_align(size, offset)
        .ok()
        .map(|l| (l, offset))
}

/// Counts `bytes` to `owner`. Plain loads and stores, not read-modify-write: the
/// simulation runs on one thread (and each unit test on an owner of its own), and this
/// runs on every allocation.
fn charge(owner: usize, bytes: i64) {
    if owner != 0 {
        let live = LIVE[owner].load(Ordering::Relaxed) + bytes;
        LIVE[owner].store(live, Ordering::Relaxed);
        if live > PEAK[owner].load(Ordering::Relaxed) {
            PEAK[owner].store(live, Ordering::Relaxed);
        }
    }
}

// SAFETY: every block is the system's, `offset` bytes into it; the owner is written at
// its start, inside the block and aligned for a usize (`offset` >= 16).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some((outer, offset)) = with_header(layout) else {
            return std::ptr::null_mut();
        };
        let base = System.alloc(outer);
        if base.is_null() {
            return base;
        }
        let owner = CURRENT.try_with(Cell::get).unwrap_or(0);
        base.cast::<usize>().write(owner);
        charge(owner, layout.size() as i64);
        base.add(offset)
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let (outer, offset) = with_header(layout).expect("allocated with this layout");
        let base = block.sub(offset);
        charge(base.cast::<usize>().read(), -(layout.size() as i64));
        System.dealloc(base, outer);
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (outer, offset) = with_header(layout).expect("allocated with this layout");
        let base = System.realloc(block.sub(offset), outer, new_size + offset);
        if base.is_null() {
            return base;
        }
        let grown = new_size as i64 - layout.size() as i64;
        charge(base.cast::<usize>().read(), grown);
        base.add(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block allocated by a tick and freed by nobody (the AWS model dropping a request)
    /// is taken off the tick; what nobody allocates is nobody's.
    #[test]
    fn blocks_are_charged_to_whoever_allocated_them() {
        let tick = Owner::tick(4000);
        let body = tick.run(|| vec![0u8; 1 << 20]);
        let grown = tick.run(|| {
            let mut grown = Vec::<u8>::with_capacity(10);
            grown.resize(1 << 19, 1);
            grown
        });
        let world = vec![0u8; 1 << 22];
        assert!(tick.peak_bytes() >= 3 << 19, "{}", tick.peak_bytes());
        assert!(tick.peak_bytes() < 1 << 21, "{}", tick.peak_bytes());
        drop((body, grown, world));
        assert_eq!(LIVE[tick.0].load(Ordering::Relaxed), 0);
    }
}
