//! A pickle reader that never executes anything: the opcode stream (protocols 0–5, as far as
//! plain data goes) becomes a tree of [`Value`]s in which a call is only recorded
//! ([`Value::Call`], [`Value::Build`]), never made. Every global the stream names must be on the
//! caller's allow-list, checked the moment it is named, so a stream that refers to `os.system`
//! (or anything else not listed) is refused before any later opcode is read. What a recorded call
//! means — a tensor rebuilt from its storage, an `OrderedDict` — is for the caller to decide.

use std::collections::HashMap;

use ld3_solvers::{Error, Result};

/// One value of the pickle stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer that fits 64 bits.
    Int(i64),
    /// A wider integer, as its little-endian two's-complement bytes.
    BigInt(Vec<u8>),
    /// A float.
    Float(f64),
    /// A text string.
    Str(String),
    /// A byte string (`bytes`, protocol-0/2 `str` kept as bytes, `bytearray`), shared: the memo
    /// and every reference hold the same bytes (a storage payload is megabytes).
    Bytes(std::sync::Arc<[u8]>),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A list.
    List(Vec<Value>),
    /// A dict, in insertion order.
    Dict(Vec<(Value, Value)>),
    /// A set or frozenset.
    Set(Vec<Value>),
    /// An allowed global, by module and name.
    Global {
        /// Its module.
        module: String,
        /// Its (qualified) name.
        name: String,
    },
    /// `callable(*args)` (REDUCE), or `cls.__new__(cls, *args)` (NEWOBJ), as recorded.
    Call {
        /// What would be called.
        callable: Box<Value>,
        /// Its arguments (a tuple).
        args: Box<Value>,
    },
    /// `obj.__setstate__(state)` (BUILD), as recorded.
    Build {
        /// The object.
        object: Box<Value>,
        /// Its state.
        state: Box<Value>,
    },
    /// A persistent id (BINPERSID / PERSID), for the caller to resolve (torch storages).
    Persistent(Box<Value>),
}

impl Value {
    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }
    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            Self::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }
    /// Whether this is the global `module.name`.
    pub fn is_global(&self, module: &str, name: &str) -> bool {
        matches!(self, Self::Global { module: m, name: n } if m == module && n == name)
    }
}

/// What may appear on the stack during reading (a MARK is never a value); a value with its
/// nesting depth and, when it is a memo entry (stored by PUT or fetched by GET), that entry's
/// key: Python's memo and stack hold one object, so items added to it or a BUILD of it later are
/// written back to the entry, and a later GET sees the filled object, as Python does.
enum Item {
    Mark,
    Value(Value, u32, Option<usize>),
}

/// The deepest nesting accepted: far beyond any checkpoint's, and shallow enough that dropping
/// or cloning a value never exhausts the stack.
pub const MAX_DEPTH: u32 = 512;

fn bad(what: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("not a readable pickle: {what}"))
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| bad(format!("truncated at byte {}", self.pos)))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn le<const N: usize>(&mut self) -> Result<[u8; N]> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
    fn len_u32(&mut self) -> Result<usize> {
        Ok(u32::from_le_bytes(self.le()?) as usize)
    }
    fn len_u64(&mut self) -> Result<usize> {
        usize::try_from(u64::from_le_bytes(self.le()?)).map_err(|_| bad("a length beyond memory"))
    }
    /// A newline-terminated line (protocol-0 arguments).
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| bad(format!("truncated at byte {}", self.pos)))?;
        let line = std::str::from_utf8(&rest[..n]).map_err(|_| bad("a line that is not UTF-8"))?;
        self.pos += n + 1;
        Ok(line)
    }
    fn text(&mut self, n: usize) -> Result<String> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| bad("a string that is not UTF-8"))
    }
}

/// Reads one pickle from `data` (which must hold exactly one, up to STOP), naming every global
/// through `allowed(module, name)`: the first one refused ends the reading with an error naming
/// it. Nothing is executed. `label` names the source in errors.
pub fn read(
    data: &[u8],
    label: &str,
    allowed: &dyn Fn(&str, &str) -> bool,
) -> Result<(Value, usize)> {
    read_inner(data, allowed).map_err(|e| match e {
        Error::Invalid(m) => Error::Invalid(format!("{label}: {m}")),
        other => other,
    })
}

fn read_inner(data: &[u8], allowed: &dyn Fn(&str, &str) -> bool) -> Result<(Value, usize)> {
    let mut r = Reader { data, pos: 0 };
    let mut stack: Vec<Item> = Vec::new();
    let mut memo: HashMap<usize, (Value, u32)> = HashMap::new();
    let pop = |stack: &mut Vec<Item>, deepest: &mut u32| -> Result<Value> {
        match stack.pop() {
            Some(Item::Value(v, d, _)) => {
                *deepest = (*deepest).max(d);
                Ok(v)
            }
            Some(Item::Mark) => Err(bad("a mark where a value was expected")),
            None => Err(bad("an empty stack")),
        }
    };
    let pop_mark = |stack: &mut Vec<Item>, deepest: &mut u32| -> Result<Vec<Value>> {
        let at = stack
            .iter()
            .rposition(|i| matches!(i, Item::Mark))
            .ok_or_else(|| bad("no mark"))?;
        let items = stack.split_off(at + 1);
        stack.pop();
        Ok(items
            .into_iter()
            .filter_map(|i| match i {
                Item::Value(v, d, _) => {
                    *deepest = (*deepest).max(d);
                    Some(v)
                }
                Item::Mark => None,
            })
            .collect())
    };
    let global = |module: &str, name: &str| -> Result<Value> {
        if !allowed(module, name) {
            return Err(Error::Invalid(format!(
                "refused: the pickle names {module}.{name}, which is not on the list of \
                 data-only globals this reader accepts; nothing was run"
            )));
        }
        Ok(Value::Global {
            module: module.to_string(),
            name: name.to_string(),
        })
    };
    loop {
        let op = r.u8()?;
        // The deepest value this opcode takes from the stack.
        let mut deepest = 0u32;
        let value = match op {
            // PROTO, FRAME: framing only.
            0x80 => {
                let v = r.u8()?;
                if v > 5 {
                    return Err(bad(format!("pickle protocol {v}")));
                }
                continue;
            }
            0x95 => {
                r.take(8)?;
                continue;
            }
            b'.' => {
                let v = pop(&mut stack, &mut deepest)?;
                return Ok((v, r.pos));
            }
            b'(' => {
                stack.push(Item::Mark);
                continue;
            }
            b'N' => Value::None,
            0x88 => Value::Bool(true),
            0x89 => Value::Bool(false),
            b'J' => Value::Int(i32::from_le_bytes(r.le()?) as i64),
            b'K' => Value::Int(r.u8()? as i64),
            b'M' => Value::Int(u16::from_le_bytes(r.le()?) as i64),
            0x8a | 0x8b => {
                let n = if op == 0x8a {
                    r.u8()? as usize
                } else {
                    r.len_u32()?
                };
                let bytes = r.take(n)?;
                if n > 8 {
                    stack.push(Item::Value(Value::BigInt(bytes.to_vec()), 1, None));
                    continue;
                }
                let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
                let mut buf = [if negative { 0xff } else { 0 }; 8];
                buf[..n].copy_from_slice(bytes);
                Value::Int(i64::from_le_bytes(buf))
            }
            b'I' => {
                let line = r.line()?;
                match line {
                    "00" => Value::Bool(false),
                    "01" => Value::Bool(true),
                    _ => Value::Int(line.parse().map_err(|_| bad("an INT that is not one"))?),
                }
            }
            b'L' => {
                Value::Int(line_int(r.line()?.trim_end_matches('L')).ok_or_else(|| bad("a LONG"))?)
            }
            b'G' => Value::Float(f64::from_be_bytes(r.le()?)),
            b'F' => Value::Float(r.line()?.parse().map_err(|_| bad("a FLOAT"))?),
            // Text and bytes, by the width of their length: 1, 4 or 8 bytes.
            0x8c | b'X' | 0x8d | b'U' | b'C' | b'T' | b'B' | 0x8e | 0x96 => {
                let n = match op {
                    0x8c | b'U' | b'C' => r.u8()? as usize,
                    b'X' | b'T' | b'B' => r.len_u32()?,
                    _ => r.len_u64()?,
                };
                if matches!(op, 0x8c | b'X' | 0x8d) {
                    Value::Str(r.text(n)?)
                } else {
                    Value::Bytes(r.take(n)?.into())
                }
            }
            b')' => Value::Tuple(vec![]),
            0x85 => Value::Tuple(vec![pop(&mut stack, &mut deepest)?]),
            0x86 => {
                let b = pop(&mut stack, &mut deepest)?;
                Value::Tuple(vec![pop(&mut stack, &mut deepest)?, b])
            }
            0x87 => {
                let c = pop(&mut stack, &mut deepest)?;
                let b = pop(&mut stack, &mut deepest)?;
                Value::Tuple(vec![pop(&mut stack, &mut deepest)?, b, c])
            }
            b't' => Value::Tuple(pop_mark(&mut stack, &mut deepest)?),
            b']' => Value::List(vec![]),
            b'l' => Value::List(pop_mark(&mut stack, &mut deepest)?),
            b'}' => Value::Dict(vec![]),
            b'd' => Value::Dict(pairs(pop_mark(&mut stack, &mut deepest)?)?),
            0x8f => Value::Set(vec![]),
            0x91 => Value::Set(pop_mark(&mut stack, &mut deepest)?),
            b'a' | b'e' | b's' | b'u' | 0x90 => {
                let items = match op {
                    b'a' | b's' => {
                        let mut v = vec![pop(&mut stack, &mut deepest)?];
                        if op == b's' {
                            v.insert(0, pop(&mut stack, &mut deepest)?);
                        }
                        v
                    }
                    _ => pop_mark(&mut stack, &mut deepest)?,
                };
                let (target, depth, key) = match stack.last_mut() {
                    Some(Item::Value(v, d, key)) => {
                        *d = (*d).max(deepest + 1);
                        if *d > MAX_DEPTH {
                            return Err(bad(format!("nesting deeper than {MAX_DEPTH}")));
                        }
                        (v, *d, *key)
                    }
                    _ => return Err(bad("nothing to add items to")),
                };
                match (op, &mut *target) {
                    (b'a' | b'e', Value::List(l)) => l.extend(items),
                    (b's' | b'u', Value::Dict(d)) => d.extend(pairs(items)?),
                    (0x90, Value::Set(s)) => s.extend(items),
                    // Items added to a recorded object (a list or dict subclass): kept as its
                    // state, in order.
                    (b'a' | b'e', obj @ Value::Call { .. }) => {
                        let object = Box::new(std::mem::replace(obj, Value::None));
                        *obj = Value::Build {
                            object,
                            state: Box::new(Value::List(items)),
                        }
                    }
                    (b's' | b'u', obj @ (Value::Call { .. } | Value::Build { .. })) => {
                        let state = Box::new(Value::Dict(pairs(items)?));
                        let object = Box::new(std::mem::replace(obj, Value::None));
                        *obj = Value::Build { object, state }
                    }
                    _ => return Err(bad("items added to something that takes none")),
                }
                if let Some(key) = key {
                    memo.insert(key, (target.clone(), depth));
                }
                continue;
            }
            b'c' => {
                let module = r.line()?.to_string();
                let name = r.line()?.to_string();
                global(&module, &name)?
            }
            0x93 => {
                let name = pop(&mut stack, &mut deepest)?;
                let module = pop(&mut stack, &mut deepest)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => global(&m, &n)?,
                    _ => return Err(bad("STACK_GLOBAL without two strings")),
                }
            }
            // REDUCE, NEWOBJ (args), NEWOBJ_EX (args, kwargs): recorded, never made.
            b'R' | 0x81 | 0x92 => {
                let mut args = pop(&mut stack, &mut deepest)?;
                if op == 0x92 {
                    let positional = pop(&mut stack, &mut deepest)?;
                    args = Value::Tuple(vec![positional, args]);
                }
                let callable = pop(&mut stack, &mut deepest)?;
                if !matches!(callable, Value::Global { .. }) {
                    return Err(bad("a call of something that is not an allowed global"));
                }
                Value::Call {
                    callable: Box::new(callable),
                    args: Box::new(args),
                }
            }
            // BUILD: Python sets the state of the object in place, so a memo entry of it sees
            // the state too.
            b'b' => {
                let state = pop(&mut stack, &mut deepest)?;
                let key = match stack.last() {
                    Some(Item::Value(_, _, key)) => *key,
                    _ => None,
                };
                let object = pop(&mut stack, &mut deepest)?;
                let built = Value::Build {
                    object: Box::new(object),
                    state: Box::new(state),
                };
                let depth = deepest + 1;
                if depth > MAX_DEPTH {
                    return Err(bad(format!("nesting deeper than {MAX_DEPTH}")));
                }
                if let Some(key) = key {
                    memo.insert(key, (built.clone(), depth));
                }
                stack.push(Item::Value(built, depth, key));
                continue;
            }
            b'Q' => Value::Persistent(Box::new(pop(&mut stack, &mut deepest)?)),
            b'P' => Value::Persistent(Box::new(Value::Str(r.line()?.to_string()))),
            b'q' => {
                let i = r.u8()? as usize;
                memo_put(&mut memo, i, &mut stack)?;
                continue;
            }
            b'r' => {
                let i = r.len_u32()?;
                memo_put(&mut memo, i, &mut stack)?;
                continue;
            }
            0x94 => {
                let i = memo.len();
                memo_put(&mut memo, i, &mut stack)?;
                continue;
            }
            b'p' => {
                let i = r.line()?.parse().map_err(|_| bad("a PUT index"))?;
                memo_put(&mut memo, i, &mut stack)?;
                continue;
            }
            b'h' | b'j' | b'g' => {
                let i = match op {
                    b'h' => r.u8()? as usize,
                    b'j' => r.len_u32()?,
                    _ => r.line()?.parse().map_err(|_| bad("a GET index"))?,
                };
                let (v, d) = memo
                    .get(&i)
                    .cloned()
                    .ok_or_else(|| bad(format!("memo {i} read before it was written")))?;
                stack.push(Item::Value(v, d, Some(i)));
                continue;
            }
            b'0' => {
                stack.pop().ok_or_else(|| bad("POP on an empty stack"))?;
                continue;
            }
            b'1' => {
                pop_mark(&mut stack, &mut deepest)?;
                continue;
            }
            b'2' => match stack.last() {
                Some(Item::Value(v, d, key)) => {
                    let item = Item::Value(v.clone(), *d, *key);
                    stack.push(item);
                    continue;
                }
                _ => return Err(bad("DUP without a value")),
            },
            other => {
                return Err(bad(format!(
                    "opcode 0x{other:02x} at byte {} (not plain data)",
                    r.pos - 1
                )))
            }
        };
        let depth = deepest + 1;
        if depth > MAX_DEPTH {
            return Err(bad(format!("nesting deeper than {MAX_DEPTH}")));
        }
        stack.push(Item::Value(value, depth, None));
    }
}

fn line_int(s: &str) -> Option<i64> {
    s.parse().ok()
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return Err(bad("a dict with an odd number of items"));
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn memo_put(memo: &mut HashMap<usize, (Value, u32)>, i: usize, stack: &mut [Item]) -> Result<()> {
    match stack.last_mut() {
        Some(Item::Value(v, d, key)) => {
            *key = Some(i);
            memo.insert(i, (v.clone(), *d));
            Ok(())
        }
        _ => Err(bad("PUT without a value")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(_: &str, _: &str) -> bool {
        true
    }

    /// Python's memo holds the object itself: filled (APPENDS, SETITEMS) after it was memoized,
    /// a later GET sees it filled.
    #[test]
    fn a_memoized_object_is_seen_filled_when_fetched_again() {
        // x = [1, 2]; pickle.dumps([x, x], protocol=2)
        let lists = [
            128u8, 2, 93, 113, 0, 40, 93, 113, 1, 40, 75, 1, 75, 2, 101, 104, 1, 101, 46,
        ];
        let two = Value::List(vec![Value::Int(1), Value::Int(2)]);
        assert_eq!(
            read(&lists, "l", &any).unwrap().0,
            Value::List(vec![two.clone(), two])
        );
        // od = OrderedDict(a=1); pickle.dumps([od, od], protocol=4)
        let mut dicts = b"\x80\x04\x95/\x00\x00\x00\x00\x00\x00\x00]\x94(".to_vec();
        dicts.extend(b"\x8c\x0bcollections\x94\x8c\x0bOrderedDict\x94\x93\x94)R\x94");
        dicts.extend(b"\x8c\x01a\x94K\x01sh\x04e.");
        let (v, _) = read(&dicts, "d", &any).unwrap();
        let Value::List(items) = v else {
            panic!("{v:?}")
        };
        assert_eq!(items.len(), 2);
        assert_eq!(items[0], items[1]);
        assert!(matches!(&items[1], Value::Build { state, .. }
            if **state == Value::Dict(vec![(Value::Str("a".into()), Value::Int(1))])));
    }

    #[test]
    fn plain_data_in_every_protocol() {
        // pickle.dumps({'a': [1, -2, 3.5, None, True], 'b': (b'xy', 'é'), 'c': 2**40}, protocol=p)
        let p2 = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01J\xfe\xff\xff\xffG@\x0c\x00\x00\x00\x00\x00\x00N\x88eX\x01\x00\x00\x00bq\x03c_codecs\nencode\nq\x04X\x02\x00\x00\x00xyq\x05X\x06\x00\x00\x00latin1q\x06\x86q\x07Rq\x08X\x02\x00\x00\x00\xc3\xa9q\t\x86q\nX\x01\x00\x00\x00cq\x0b\x8a\x06\x00\x00\x00\x00\x00\x01u.";
        let p4 = b"\x80\x04\x95;\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01a\x94]\x94(K\x01J\xfe\xff\xff\xffG@\x0c\x00\x00\x00\x00\x00\x00N\x88e\x8c\x01b\x94C\x02xy\x94\x8c\x02\xc3\xa9\x94\x86\x94\x8c\x01c\x94\x8a\x06\x00\x00\x00\x00\x00\x01u.";
        let (v4, used) = read(p4, "p4", &any).unwrap();
        assert_eq!(used, p4.len());
        let Value::Dict(d) = &v4 else {
            panic!("{v4:?}")
        };
        assert_eq!(d[0].0, Value::Str("a".into()));
        assert_eq!(
            d[0].1,
            Value::List(vec![
                Value::Int(1),
                Value::Int(-2),
                Value::Float(3.5),
                Value::None,
                Value::Bool(true)
            ])
        );
        assert_eq!(
            d[1].1,
            Value::Tuple(vec![Value::Bytes(b"xy"[..].into()), Value::Str("é".into())])
        );
        assert_eq!(d[2].1, Value::Int(1 << 40));
        // Protocol 2 spells bytes as a call of _codecs.encode: recorded, not made.
        let (v2, _) = read(p2, "p2", &any).unwrap();
        let Value::Dict(d) = &v2 else {
            panic!("{v2:?}")
        };
        assert!(
            matches!(&d[1].1, Value::Tuple(t) if matches!(&t[0], Value::Call { callable, .. } if callable.is_global("_codecs", "encode")))
        );
    }

    #[test]
    fn refuses_unlisted_globals_and_truncation() {
        // pickle.dumps of a class whose __reduce__ returns (os.system, ('echo pwned',)).
        let evil = b"\x80\x04\x95%\x00\x00\x00\x00\x00\x00\x00\x8c\x05posix\x94\x8c\x06system\x94\x93\x94\x8c\necho pwned\x94\x85\x94R\x94.";
        let only_codecs = |m: &str, n: &str| m == "_codecs" && n == "encode";
        let e = read(evil, "evil.pkl", &only_codecs)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("evil.pkl") && e.contains("posix.system") && e.contains("refused"),
            "{e}"
        );
        // Protocol 0 spells globals on lines.
        let evil0 = b"cos\nsystem\n(S'echo pwned'\ntR.";
        let e = read(evil0, "evil0", &only_codecs).unwrap_err().to_string();
        assert!(e.contains("os.system"), "{e}");
        let p4 = b"\x80\x04\x95\t\x00\x00\x00\x00\x00\x00\x00]\x94(K\x01K\x02e.";
        assert_eq!(
            read(p4, "l", &any).unwrap().0,
            Value::List(vec![Value::Int(1), Value::Int(2)])
        );
        for cut in 0..p4.len() - 1 {
            let e = read(&p4[..cut], "cut.pkl", &any).unwrap_err().to_string();
            assert!(e.contains("cut.pkl"), "{e}");
        }
        // Deep nesting (each EMPTY_LIST + APPEND wraps one level) is refused, not a stack overflow.
        let mut deep = b"\x80\x04]".to_vec();
        for _ in 0..100_000 {
            deep.extend(b"]");
        }
        for _ in 0..100_000 {
            deep.extend(b"a");
        }
        deep.extend(b".");
        let e = read(&deep, "deep", &any).unwrap_err().to_string();
        assert!(e.contains("nesting deeper than"), "{e}");
        let mut ok = b"]".repeat(100);
        ok.extend(b"a".repeat(99));
        ok.push(b'.');
        assert!(read(&ok, "ok", &any).is_ok());
        // Opcodes outside plain data (INST/OBJ build instances by calling) are refused.
        let inst = b"(ios\nsystem\nS'x'\n.";
        assert!(read(inst, "inst", &any).is_err());
    }

    proptest::proptest! {
        /// Any bytes at all: a value or an error, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = read(&data, "x", &any);
        }

        /// Any prefix of a valid stream is an error, not a panic or a wrong value.
        #[test]
        fn prefixes_are_errors(cut in 0usize..40) {
            let p4 = b"\x80\x04\x95\t\x00\x00\x00\x00\x00\x00\x00]\x94(K\x01K\x02e.";
            proptest::prop_assume!(cut < p4.len());
            proptest::prop_assert!(read(&p4[..cut], "x", &any).is_err());
        }
    }
}
