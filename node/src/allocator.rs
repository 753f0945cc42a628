//! The process's global allocator: mimalloc, called the way its author
//! recommends for callers that always know the alignment.
//!
//! The `mimalloc` crate's allocator passes every Rust allocation to
//! `mi_malloc_aligned`, even the byte buffers and structs whose alignment
//! every mimalloc block already has. mimalloc 3's aligned entry point only
//! takes its fast path for small blocks whose rounded size is a power of
//! two; everything else (hyper's 8 KiB read buffers, a 48-byte `Arc`, every
//! boxed future) goes through its over-allocating fallback, which costs
//! instructions on every request and can round a block up to a larger size
//! class. (Reported upstream: purpleprotocol/mimalloc_rust#170, and
//! microsoft/mimalloc#314, where mimalloc's author says plain `mi_malloc`
//! is the right call for such requests.)
//!
//! The rule is the one the standard library's `System` allocator applies to
//! `malloc`: an alignment of at most 16 bytes that is not larger than the
//! size goes to the plain entry points. On 64-bit targets mimalloc rounds
//! every block larger than one word to a multiple of 16 bytes and starts
//! every page 16-aligned (`MI_ALIGN2W`, `MI_MAX_ALIGN_SIZE`), and a one-word
//! block is word-aligned, which an alignment no larger than the size then
//! satisfies. Larger alignments keep the aligned entry points.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc, mi_zalloc_aligned,
};

/// The largest alignment every block of at least that size has
/// (mimalloc's `MI_MAX_ALIGN_SIZE` on 64-bit targets).
const NATURAL_ALIGN: usize = 16;

const _: () = assert!(usize::BITS == 64, "NATURAL_ALIGN is mimalloc's guarantee on 64-bit targets only");

/// mimalloc as the global allocator: `#[global_allocator] static A: MiMalloc = MiMalloc;`.
pub struct MiMalloc;

/// Whether a plain (unaligned) allocation of `size` bytes is aligned enough.
#[inline(always)]
fn naturally_aligned(size: usize, align: usize) -> bool {
    align <= NATURAL_ALIGN && align <= size
}

// SAFETY: every method passes the caller's layout on to mimalloc's matching
// entry point; blocks from either family may be freed with `mi_free` and
// resized with `mi_realloc`/`mi_realloc_aligned` (mimalloc's contract).
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's allocation functions accept any size and a power-of-two alignment.
        unsafe {
            if naturally_aligned(layout.size(), layout.align()) {
                mi_malloc(layout.size()).cast()
            } else {
                mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if naturally_aligned(layout.size(), layout.align()) {
                mi_zalloc(layout.size()).cast()
            } else {
                mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract).
        unsafe { mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`; the new block
        // keeps the alignment the layout asks for.
        unsafe {
            if naturally_aligned(new_size, layout.align()) {
                mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size class up to 64 KiB at every alignment up to 4 KiB comes back
    /// aligned, writable to its last byte, and keeps its bytes when it grows
    /// and shrinks; zeroed blocks are zero.
    #[test]
    fn every_block_has_its_alignment_and_keeps_its_bytes() {
        let sizes = (1..=256).chain((257..=65_536).step_by(997)).chain([4096, 8192, 8193, 65_536]);
        for size in sizes {
            for align in (0..=12).map(|shift| 1usize << shift) {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; every block is freed with its layout.
                unsafe {
                    let block = MiMalloc.alloc(layout);
                    assert!(!block.is_null());
                    assert_eq!(block as usize % align, 0, "size {size}, align {align}");
                    std::ptr::write_bytes(block, 0xA5, size);

                    let grown = MiMalloc.realloc(block, layout, size * 3);
                    assert_eq!(grown as usize % align, 0, "grown: size {size}, align {align}");
                    assert!(std::slice::from_raw_parts(grown, size).iter().all(|&b| b == 0xA5));
                    let shrunk = MiMalloc.realloc(grown, Layout::from_size_align(size * 3, align).unwrap(), size);
                    assert_eq!(shrunk as usize % align, 0, "shrunk: size {size}, align {align}");
                    assert!(std::slice::from_raw_parts(shrunk, size).iter().all(|&b| b == 0xA5));
                    MiMalloc.dealloc(shrunk, layout);

                    let zeroed = MiMalloc.alloc_zeroed(layout);
                    assert_eq!(zeroed as usize % align, 0, "zeroed: size {size}, align {align}");
                    assert!(std::slice::from_raw_parts(zeroed, size).iter().all(|&b| b == 0));
                    MiMalloc.dealloc(zeroed, layout);
                }
            }
        }
    }

    /// The plain entry points are taken exactly where their blocks suffice.
    #[test]
    fn only_small_alignments_take_the_plain_entry_points() {
        assert!(naturally_aligned(1, 1));
        assert!(naturally_aligned(8, 8));
        assert!(naturally_aligned(24, 8));
        assert!(naturally_aligned(48, 16));
        assert!(naturally_aligned(8192, 1));
        assert!(!naturally_aligned(8, 16), "an 8-byte block is only word-aligned");
        assert!(!naturally_aligned(128, 32));
        assert!(!naturally_aligned(4096, 4096));
    }
}
