//! A per-thread memo of what was last computed from a few byte values: visitors who made the
//! same choices send the same consent cookie, so its decoding (`consent::Format::decode`) and
//! the audit log's digest of it are computed once per thread and value, not once per request.
//! Pure as far as its users can tell: what it gives back is what the computation would.

use std::cell::RefCell;
use std::thread::LocalKey;

/// Values remembered per thread.
pub const ENTRIES: usize = 8;
/// Longer values are computed from every time, never remembered (a TCF string or a OneTrust
/// value with a timestamp is one visitor's own; a portal's JSON consent is ~100 bytes).
pub const MAX_VALUE: usize = 512;

/// The last [`ENTRIES`] values seen, each under a tag (what was computed depends on both), with
/// what was computed from them; replaced in turn.
pub struct Recent<T, V> {
    entries: Vec<(T, Box<[u8]>, V)>,
    next: usize,
}

impl<T, V> Default for Recent<T, V> {
    fn default() -> Self {
        Recent {
            entries: Vec::new(),
            next: 0,
        }
    }
}

impl<T: PartialEq + Copy + 'static, V: Clone + 'static> Recent<T, V> {
    /// `compute()`, which must be a function of `tag` and `value` alone: from `memo` when this
    /// thread computed it lately, else computed and remembered (unless `value` is longer than
    /// [`MAX_VALUE`]).
    pub fn through(
        memo: &'static LocalKey<RefCell<Self>>,
        tag: T,
        value: &[u8],
        compute: impl FnOnce() -> V,
    ) -> V {
        if value.len() > MAX_VALUE {
            return compute();
        }
        // (`try_`: a thread that exits, or a computation that would use the memo itself, is
        // only not remembered.)
        let hit = memo
            .try_with(|m| m.try_borrow().ok().and_then(|m| m.get(tag, value)))
            .ok()
            .flatten();
        if let Some(v) = hit {
            return v;
        }
        let v = compute();
        let _ = memo.try_with(|m| {
            if let Ok(mut m) = m.try_borrow_mut() {
                m.put(tag, value, v.clone());
            }
        });
        v
    }

    fn get(&self, tag: T, value: &[u8]) -> Option<V> {
        self.entries
            .iter()
            .find(|(t, v, _)| *t == tag && **v == *value)
            .map(|(_, _, computed)| computed.clone())
    }

    fn put(&mut self, tag: T, value: &[u8], computed: V) {
        let entry = (tag, Box::from(value), computed);
        if self.entries.len() < ENTRIES {
            self.entries.push(entry);
        } else if let Some(slot) = self.entries.get_mut(self.next) {
            *slot = entry;
            self.next = (self.next + 1) % ENTRIES;
        }
    }
}
