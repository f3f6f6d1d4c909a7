//! The memory functions the compiler may call (`memcpy` and friends). There is no
//! C library in a guest, so the SDK provides them, written with string
//! instructions so that the compiler cannot turn them back into calls to themselves.

use core::arch::asm;

/// # Safety
/// The C contract of `memcpy`: both ranges valid for `len` bytes, not overlapping.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, len: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the C contract of memcpy.
    unsafe {
        asm!("rep movsb", inout("rcx") len => _, inout("rdi") dest => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// The C contract of `memmove`: both ranges valid for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, len: usize) -> *mut u8 {
    if (dest as usize) <= (src as usize) || (dest as usize) >= (src as usize).wrapping_add(len) {
        // SAFETY: a forward copy is correct when dest does not start inside src.
        return unsafe { memcpy(dest, src, len) };
    }
    // SAFETY: copying backwards (direction flag set, then cleared as the ABI
    // requires) is correct for an overlap with dest above src.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rcx") len => _,
             inout("rdi") dest.add(len - 1) => _,
             inout("rsi") src.add(len - 1) => _,
             options(nostack));
    }
    dest
}

/// # Safety
/// The C contract of `memset`: `dest` valid for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memset(dest: *mut u8, value: i32, len: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the C contract of memset.
    unsafe {
        asm!("rep stosb", inout("rcx") len => _, inout("rdi") dest => _, in("al") value as u8,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// The C contract of `memcmp`: both ranges valid for `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, len: usize) -> i32 {
    for i in 0..len {
        // SAFETY: i < len, inside both ranges by the caller's contract.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
/// As for `memcmp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, len: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, len) }
}
