//! The process's global allocator: mimalloc, called the way its author
//! recommends for callers that always know the alignment.
//!
//! The `mimalloc` crate's allocator passes every Rust allocation to
//! `mi_malloc_aligned`, even the byte buffers and structs whose alignment
//! every mimalloc block already has. mimalloc 3's aligned entry point has a
//! fast path only for blocks up to 1 KiB that find a free block in their
//! size's current page; past that it allocates plainly only when the size
//! class is a power of two up to 4 KiB, and otherwise goes through its
//! over-allocating fallback (hyper's 8 KiB read buffers included). Each
//! costs instructions on every request. (A fix is proposed upstream in
//! purpleprotocol/mimalloc_rust#170; in microsoft/mimalloc#314 mimalloc's
//! author says calling plain `mi_malloc` for such requests is much better
//! for performance.)
//!
//! The rule is the one the standard library's `System` allocator applies to
//! `malloc`: an alignment of at most 16 bytes that is not larger than the
//! size goes to the plain entry points. On 64-bit targets mimalloc 3 rounds
//! every block larger than one word to an even number of words
//! (`MI_ALIGN2W`, from `MI_MAX_ALIGN_SIZE` = 16) and places blocks at
//! 16-byte multiples from a 16-aligned start; a one-word block is
//! word-aligned, which an alignment no larger than its size then satisfies.
//! Larger alignments keep the aligned entry points. This holds for the
//! build configuration libmimalloc-sys is used with here (`no_thp` only);
//! its `debug` and `debug_in_debug` features turn on mimalloc's guarded
//! pages, under which (with the `guarded_precise` option) plain blocks may
//! not be 16-aligned, so those features are never to be turned on for this
//! binary (the workspace's Cargo.toml says so too). The tests below check
//! the rule against the linked mimalloc.

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

    /// Every size up to 256 bytes; both sides of every size class boundary
    /// up to 16 KiB (mimalloc has four classes per power of two p: 1.25p,
    /// 1.5p, 1.75p and 2p); a spread of sizes up to 64 KiB; both sides of the
    /// small, medium and large object limits (10 KiB, about 84 KiB, 512 KiB),
    /// past which a block gets a page of its own; and 1 and 4 MiB. Each at
    /// every alignment up to 4 KiB: the block comes back aligned, writable to
    /// its last byte, keeps its bytes when it grows and shrinks (across the
    /// plain and aligned entry points both ways), and zeroed blocks are
    /// zero. Sizes that are not multiples of the alignment (40 at 16, in the
    /// 48-byte class, say) are included on purpose.
    #[test]
    fn every_block_has_its_alignment_and_keeps_its_bytes() {
        let class_edges = (6..=14)
            .map(|shift| 1usize << shift)
            .flat_map(|p| [p, p + p / 4, p + p / 2, p + 3 * p / 4])
            .flat_map(|edge| [edge - 1, edge, edge + 1]);
        let object_limits = [10 << 10, 86_698, 512 << 10].into_iter().flat_map(|limit| [limit - 1, limit, limit + 1]);
        let sizes: Vec<usize> = (1..=256)
            .chain(class_edges)
            .chain((257..=65_536).step_by(997))
            .chain([65_536])
            .chain(object_limits)
            .chain([(1 << 20) + 3, 4 << 20])
            .filter(|&size| size > 0)
            .collect();
        for &size in &sizes {
            for align in (0..=12).map(|shift| 1usize << shift) {
                check_block(size, align);
            }
        }
    }

    /// One block of `size` at `align`: allocated, grown to three times its
    /// size, shrunk to a sixteenth of that (crossing between the plain and
    /// aligned entry points for small sizes), freed; then a zeroed one.
    fn check_block(size: usize, align: usize) {
        let layout = Layout::from_size_align(size, align).unwrap();
        let aligned = |block: *mut u8, what: &str| {
            assert!(!block.is_null(), "{what}: size {size}, align {align}: out of memory");
            assert_eq!(block as usize % align, 0, "{what}: size {size}, align {align}");
        };
        // SAFETY: non-zero sizes; every block is resized and freed with the
        // layout it has at that point, and read only within its size.
        unsafe {
            let block = MiMalloc.alloc(layout);
            aligned(block, "allocated");
            std::ptr::write_bytes(block, 0xA5, size);

            let grown = MiMalloc.realloc(block, layout, size * 3);
            aligned(grown, "grown");
            assert!(std::slice::from_raw_parts(grown, size).iter().all(|&b| b == 0xA5));

            let small = (size * 3 / 16).max(1);
            let shrunk = MiMalloc.realloc(grown, Layout::from_size_align(size * 3, align).unwrap(), small);
            aligned(shrunk, "shrunk");
            assert!(std::slice::from_raw_parts(shrunk, small.min(size)).iter().all(|&b| b == 0xA5));
            MiMalloc.dealloc(shrunk, Layout::from_size_align(small, align).unwrap());

            let zeroed = MiMalloc.alloc_zeroed(layout);
            aligned(zeroed, "zeroed");
            assert!(std::slice::from_raw_parts(zeroed, size).iter().all(|&b| b == 0));
            MiMalloc.dealloc(zeroed, layout);
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
