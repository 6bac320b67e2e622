//! A counting global allocator for the tests that check what reading hostile input allocates.
//! A test binary installs it with
//! `#[global_allocator] static A: toolkit_tests::alloc::Counting = toolkit_tests::alloc::Counting;`
//! and wraps each read in [`measure`].

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Counts, per thread, live bytes, their peak and the largest single request: the tests
/// measure what decoding one file allocates on the thread that decodes it.
pub struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn grew(by: usize, request: usize) {
    let _ = LIVE.try_with(|l| {
        l.set(l.get() + by);
        let _ = PEAK.try_with(|p| p.set(p.get().max(l.get())));
    });
    let _ = LARGEST.try_with(|m| m.set(m.get().max(request)));
}

fn shrank(by: usize) {
    let _ = LIVE.try_with(|l| l.set(l.get().saturating_sub(by)));
}

// SAFETY: forwards to the system allocator; the counters are const-initialised thread-locals
// without destructors, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size(), layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size(), layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrank(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            grew(new_size - layout.size(), new_size);
        } else {
            shrank(layout.size() - new_size);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// What `f` allocated on this thread: the largest single request and the peak of live bytes
/// above what was live before (both 0 unless [`Counting`] is the global allocator).
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    LARGEST.with(|m| m.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get), PEAK.with(Cell::get).saturating_sub(base))
}
