//! A header map as a filter sees it, built for what filters mostly do: read a few headers,
//! add or replace one or two. The map is serialized once, in the ABI's own format (what
//! `proxy_get_header_map_pairs` hands over as it is); lookups scan those bytes; writes are
//! recorded and replayed on the real headers afterwards. An editable copy is made only when
//! a filter reads after writing or replaces the whole map.

use super::abi;
use std::borrow::Cow;

/// A header map: (name, value) pairs in order, names lower-case.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

pub enum Op {
    Add(Vec<u8>, Vec<u8>),
    Replace(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
}

/// Bytes of names and values a filter may write into one map: more than any header block
/// the gateway accepts, little enough that a looping filter cannot hold host memory.
const MAX_WRITTEN: usize = 64 << 10;

pub struct Map {
    base: Vec<u8>,
    written: usize,
    /// Writes not yet folded into `edited`.
    ops: Vec<Op>,
    /// The whole map after the writes, once one was needed; then `ops` is empty.
    edited: Option<Pairs>,
}

/// What the filter did to the map.
pub enum Outcome {
    Untouched,
    Ops(Vec<Op>),
    Whole(Pairs),
}

/// One write applied to a whole map.
fn fold(e: &mut Pairs, op: Op) {
    match op {
        Op::Add(k, v) => e.push((k, v)),
        Op::Replace(k, v) => {
            e.retain(|(n, _)| *n != k);
            e.push((k, v));
        }
        Op::Remove(k) => e.retain(|(n, _)| *n != k),
    }
}

impl Map {
    pub fn new(pairs: &[(&[u8], &[u8])]) -> Map {
        Map {
            base: abi::encode_map(pairs.iter().copied()),
            written: 0,
            ops: Vec::new(),
            edited: None,
        }
    }

    /// Every pair with the writes so far applied, kept from here on.
    fn edited(&mut self) -> &mut Pairs {
        let base = &self.base;
        let ops = &mut self.ops;
        let e = self
            .edited
            .get_or_insert_with(|| abi::pairs(base).map(|(k, v)| (k.to_vec(), v.to_vec())).collect());
        for op in ops.drain(..) {
            fold(e, op);
        }
        e
    }

    fn clean(&self) -> bool {
        self.ops.is_empty() && self.edited.is_none()
    }

    pub fn count(&mut self) -> usize {
        if self.clean() {
            abi::pairs(&self.base).count()
        } else {
            self.edited().len()
        }
    }

    pub fn get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        if self.clean() {
            return abi::pairs(&self.base).find(|(k, _)| *k == key).map(|(_, v)| v.to_vec());
        }
        self.edited().iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    pub fn encoded(&mut self) -> Cow<'_, [u8]> {
        if self.clean() {
            return Cow::Borrowed(&self.base);
        }
        let e = self.edited();
        Cow::Owned(abi::encode_map(e.iter().map(|(k, v)| (k.as_slice(), v.as_slice()))))
    }

    /// Writes go to the copy when there is one, else into the log. False (and nothing
    /// written) past `MAX_WRITTEN`.
    fn write(&mut self, op: Op) -> bool {
        let size = match &op {
            Op::Add(k, v) | Op::Replace(k, v) => k.len() + v.len() + 2,
            Op::Remove(k) => k.len() + 2,
        };
        if self.written + size > MAX_WRITTEN {
            return false;
        }
        self.written += size;
        if self.edited.is_some() {
            self.ops.push(op);
            self.edited();
        } else {
            self.ops.push(op);
        }
        true
    }

    pub fn add(&mut self, k: Vec<u8>, v: Vec<u8>) -> bool {
        self.write(Op::Add(k, v))
    }

    pub fn replace(&mut self, k: Vec<u8>, v: Vec<u8>) -> bool {
        self.write(Op::Replace(k, v))
    }

    pub fn remove(&mut self, k: Vec<u8>) -> bool {
        self.write(Op::Remove(k))
    }

    pub fn set_all(&mut self, pairs: Pairs) -> bool {
        let size: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        if self.written + size > MAX_WRITTEN {
            return false;
        }
        self.written += size;
        self.ops.clear();
        self.edited = Some(pairs);
        true
    }

    pub fn outcome(self) -> Outcome {
        match self.edited {
            Some(mut e) => {
                for op in self.ops {
                    fold(&mut e, op);
                }
                Outcome::Whole(e)
            }
            None if self.ops.is_empty() => Outcome::Untouched,
            None => Outcome::Ops(self.ops),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> Map {
        Map::new(&[(b":path", b"/a"), (b"x-a", b"1"), (b"x-a", b"2")])
    }

    #[test]
    fn reads_before_and_after_writes_agree() {
        let mut m = map();
        assert_eq!(m.count(), 3);
        assert_eq!(m.get(b"x-a").as_deref(), Some(&b"1"[..]));
        m.add(b"x-b".to_vec(), b"3".to_vec());
        m.replace(b"x-a".to_vec(), b"9".to_vec());
        assert_eq!(m.count(), 3, "both x-a values replaced by one");
        assert_eq!(m.get(b"x-a").as_deref(), Some(&b"9"[..]));
        m.remove(b"x-b".to_vec());
        let Outcome::Whole(e) = m.outcome() else {
            panic!("a read after writes keeps the copy")
        };
        assert_eq!(e, vec![(b":path".to_vec(), b"/a".to_vec()), (b"x-a".to_vec(), b"9".to_vec())]);
    }

    #[test]
    fn blind_writes_stay_a_log() {
        let mut m = map();
        m.add(b"x-b".to_vec(), b"3".to_vec());
        assert!(matches!(m.outcome(), Outcome::Ops(ops) if ops.len() == 1));
        assert!(matches!(map().outcome(), Outcome::Untouched));
        let mut m = map();
        assert_eq!(
            &*m.encoded(),
            &abi::encode_map([(&b":path"[..], &b"/a"[..]), (b"x-a", b"1"), (b"x-a", b"2")].into_iter())
        );
    }
}
