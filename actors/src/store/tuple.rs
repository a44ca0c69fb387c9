//! Order-preserving key encoding, compatible with FoundationDB's tuple layer for the element
//! types cadre uses: byte strings, UTF-8 strings and non-negative integers.

/// One element of a key tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Elem<'a> {
    /// A byte string.
    Bytes(&'a [u8]),
    /// A UTF-8 string.
    Str(&'a str),
    /// A non-negative integer.
    Int(u64),
}

/// A decoded element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A byte string.
    Bytes(Vec<u8>),
    /// A UTF-8 string.
    Str(String),
    /// A non-negative integer.
    Int(u64),
}

/// A key that is not a valid tuple.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid tuple key at byte {at}: {what}")]
pub struct TupleError {
    /// The byte offset where decoding failed.
    pub at: usize,
    /// What is wrong there.
    pub what: &'static str,
}

const BYTES: u8 = 0x01;
const STRING: u8 = 0x02;
const INT_ZERO: u8 = 0x14;

/// Encodes a tuple; byte order of encodings equals tuple order.
pub fn pack(elems: &[Elem<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    for e in elems {
        pack_into(&mut out, e);
    }
    out
}

/// Appends one element's encoding.
pub fn pack_into(out: &mut Vec<u8>, elem: &Elem<'_>) {
    match elem {
        Elem::Bytes(b) => escaped(out, BYTES, b),
        Elem::Str(s) => escaped(out, STRING, s.as_bytes()),
        Elem::Int(0) => out.push(INT_ZERO),
        Elem::Int(n) => {
            let len = 8 - (n.leading_zeros() / 8) as usize;
            out.push(INT_ZERO + len as u8);
            out.extend_from_slice(&n.to_be_bytes()[8 - len..]);
        }
    }
}

fn escaped(out: &mut Vec<u8>, code: u8, bytes: &[u8]) {
    out.push(code);
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.push(0);
}

/// Decodes a tuple.
pub fn unpack(key: &[u8]) -> Result<Vec<Value>, TupleError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < key.len() {
        let code = key[i];
        i += 1;
        match code {
            BYTES | STRING => {
                let mut buf = Vec::new();
                loop {
                    match key.get(i) {
                        None => {
                            return Err(TupleError {
                                at: i,
                                what: "unterminated string",
                            });
                        }
                        Some(0) if key.get(i + 1) == Some(&0xff) => {
                            buf.push(0);
                            i += 2;
                        }
                        Some(0) => {
                            i += 1;
                            break;
                        }
                        Some(&b) => {
                            buf.push(b);
                            i += 1;
                        }
                    }
                }
                out.push(if code == BYTES {
                    Value::Bytes(buf)
                } else {
                    Value::Str(String::from_utf8(buf).map_err(|_| TupleError {
                        at: i,
                        what: "string is not UTF-8",
                    })?)
                });
            }
            INT_ZERO..=0x1c => {
                let len = (code - INT_ZERO) as usize;
                let bytes = key.get(i..i + len).ok_or(TupleError {
                    at: i,
                    what: "short integer",
                })?;
                let mut n = 0u64;
                for &b in bytes {
                    n = (n << 8) | b as u64;
                }
                out.push(Value::Int(n));
                i += len;
            }
            _ => {
                return Err(TupleError {
                    at: i - 1,
                    what: "unsupported type code",
                });
            }
        }
    }
    Ok(out)
}

/// The keys strictly inside the tuple prefix: `[prefix 0x00, prefix 0xff)`.
pub fn range(prefix: &[Elem<'_>]) -> (Vec<u8>, Vec<u8>) {
    let p = pack(prefix);
    let mut begin = p.clone();
    begin.push(0x00);
    let mut end = p;
    end.push(0xff);
    (begin, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_sort_numerically_and_round_trip() {
        let ns = [0u64, 1, 2, 255, 256, 65_535, 65_536, 1 << 40, u64::MAX];
        let keys: Vec<_> = ns
            .iter()
            .map(|&n| pack(&[Elem::Str("c"), Elem::Int(n)]))
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        for (k, &n) in keys.iter().zip(&ns) {
            assert_eq!(unpack(k).unwrap(), [Value::Str("c".into()), Value::Int(n)]);
        }
    }

    #[test]
    fn strings_with_nul_sort_and_round_trip() {
        let a = pack(&[Elem::Str("a"), Elem::Int(9)]);
        let a0 = pack(&[Elem::Str("a\0b"), Elem::Int(1)]);
        let ab = pack(&[Elem::Str("ab"), Elem::Int(1)]);
        assert!(a < a0 && a0 < ab);
        assert_eq!(unpack(&a0).unwrap()[0], Value::Str("a\0b".into()));
        assert_eq!(
            unpack(&pack(&[Elem::Bytes(b"\0\xff")])).unwrap(),
            [Value::Bytes(vec![0, 0xff])]
        );
    }

    #[test]
    fn a_prefix_range_holds_exactly_its_children() {
        let (b, e) = range(&[Elem::Str("conv"), Elem::Str("x")]);
        let inside = pack(&[Elem::Str("conv"), Elem::Str("x"), Elem::Int(7)]);
        let sibling = pack(&[Elem::Str("conv"), Elem::Str("xy"), Elem::Int(1)]);
        assert!(b <= inside && inside < e);
        assert!(!(b <= sibling && sibling < e));
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(unpack(&[0x02, b'a']).is_err());
        assert!(unpack(&[0x16, 1]).is_err());
        assert!(unpack(&[0x7f]).is_err());
    }
}
