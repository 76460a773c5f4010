//! Key material is wiped when it goes (`docs/security.md` §3): types that
//! hold secret bytes implement [`zeroize::ZeroizeOnDrop`], by derive or by
//! a `Drop` that wipes the key fields, or keep them in [`Zeroizing`].
//!
//! What this cannot reach: keys inside third-party types (ring's AEAD and
//! HMAC keys, snow's handshake state, rustls's connection secrets), and
//! the copies a move leaves on the stack.

pub use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// A 32-byte key, wiped on drop.
pub type Key32 = Zeroizing<[u8; 32]>;

/// The bytes a `[u8; N]` field of `$value` holds right after `$value` was
/// dropped: all zero for a key its type wipes on drop. For tests: it shows
/// the drop itself wiped the memory, not a call the test made.
#[doc(hidden)]
#[macro_export]
macro_rules! key_bytes_after_drop {
    ($value:expr, $($field:tt).+) => {{
        let mut slot = ::std::mem::MaybeUninit::new($value);
        // SAFETY: `slot` holds an initialised value, dropped here exactly
        // once and never used as a value again. The field is a `[u8; N]`
        // or a `Zeroizing` of one (`$crate::secret::KeyField`): plain bytes that
        // stay in `slot`'s storage, read once before `slot` goes out of
        // scope.
        unsafe {
            ::std::ptr::drop_in_place(slot.as_mut_ptr());
            $crate::secret::read_key(::std::ptr::addr_of!((*slot.as_ptr()).$($field).+))
        }
    }};
}

/// Field types [`key_bytes_after_drop!`] reads: plain bytes, alone or in
/// a `Zeroizing` (which is `repr(transparent)`).
///
/// # Safety
/// `Self` must have the layout of `Self::Bytes`, an array of bytes.
#[doc(hidden)]
pub unsafe trait KeyField {
    type Bytes;
}

// SAFETY: the array itself.
unsafe impl<const N: usize> KeyField for [u8; N] {
    type Bytes = [u8; N];
}

// SAFETY: `Zeroizing` is `repr(transparent)` over the array.
unsafe impl<const N: usize> KeyField for Zeroizing<[u8; N]> {
    type Bytes = [u8; N];
}

/// Reads the key bytes at `p`.
///
/// # Safety
/// `p` must point at a readable `T`'s storage.
#[doc(hidden)]
pub unsafe fn read_key<T: KeyField>(p: *const T) -> T::Bytes {
    // SAFETY: the caller's promise, and `KeyField`'s layout.
    unsafe { std::ptr::read(p.cast::<T::Bytes>()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The drop wipes, and `key_bytes_after_drop` would see it if not: a
    /// plain array keeps its bytes after its drop.
    #[test]
    fn a_key_of_a_wiping_type_is_zero_after_its_drop_and_a_plain_one_is_not() {
        struct Plain {
            key: [u8; 32],
        }
        struct Wiped {
            key: Key32,
        }
        assert_eq!(
            key_bytes_after_drop!(Plain { key: [0xa5; 32] }, key),
            [0xa5; 32]
        );
        let wiped = Wiped {
            key: Zeroizing::new([0xa5; 32]),
        };
        let bytes = key_bytes_after_drop!(wiped, key);
        assert_eq!(bytes, [0; 32]);
    }
}
