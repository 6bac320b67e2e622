//! The subset of Python's pickle format that `torch.save` files use: a small unpickler that
//! builds a [`Value`] tree without executing anything, and a writer for protocol 2.
//!
//! Globals and `REDUCE` calls are kept symbolic ([`Value::Global`], [`Value::Call`]); the caller
//! interprets the few that torch uses (`_rebuild_tensor_v2`, `OrderedDict`, storages).

use std::collections::HashMap;

use thiserror::Error;

#[derive(Debug, Error, PartialEq)]
pub enum PickleError {
    #[error("pickle data ends early")]
    Truncated,
    #[error("unsupported pickle opcode 0x{0:02x} at byte {1}")]
    Opcode(u8, usize),
    #[error("malformed pickle: {0}")]
    Malformed(String),
}

/// A pickled value. Containers keep insertion order.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// An integer wider than 64 bits, as little-endian two's complement bytes.
    BigInt(Vec<u8>),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    /// `module.name`, as referenced by GLOBAL / STACK_GLOBAL.
    Global(String, String),
    /// A callable applied to arguments (REDUCE / NEWOBJ), not evaluated.
    Call(Box<Value>, Vec<Value>),
    /// A persistent id (BINPERSID): torch's reference to a storage record.
    PersistentId(Box<Value>),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// The items of a tuple or list.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(v) | Value::List(v) => Some(v),
            _ => None,
        }
    }

    /// Entries of a dict, or of an `OrderedDict(...)` call carrying its items after BUILD/SETITEMS.
    pub fn as_dict(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// Looks up a string key in a dict.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.as_dict()?.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
    }
}

enum Item {
    Mark,
    Val(Value),
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        let end = self.pos.checked_add(n).ok_or(PickleError::Truncated)?;
        let s = self.data.get(self.pos..end).ok_or(PickleError::Truncated)?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, PickleError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32, PickleError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn i32(&mut self) -> Result<i32, PickleError> {
        Ok(i32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, PickleError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.data[self.pos..];
        let nl = rest.iter().position(|&b| b == b'\n').ok_or(PickleError::Truncated)?;
        self.pos += nl + 1;
        std::str::from_utf8(&rest[..nl]).map_err(|_| PickleError::Malformed("non-UTF-8 text".into()))
    }
    fn string(&mut self, n: usize) -> Result<String, PickleError> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| PickleError::Malformed("invalid UTF-8 string".into()))
    }
}

/// Unpickles one object from the start of `data`; returns it and the number of bytes read
/// (legacy torch files hold several pickles back to back).
pub fn unpickle(data: &[u8]) -> Result<(Value, usize), PickleError> {
    let mut r = Reader { data, pos: 0 };
    let mut stack: Vec<Item> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();

    fn pop(stack: &mut Vec<Item>) -> Result<Value, PickleError> {
        match stack.pop() {
            Some(Item::Val(v)) => Ok(v),
            _ => Err(PickleError::Malformed("stack underflow".into())),
        }
    }
    fn pop_mark(stack: &mut Vec<Item>) -> Result<Vec<Value>, PickleError> {
        let mut items = Vec::new();
        loop {
            match stack.pop() {
                Some(Item::Mark) => break,
                Some(Item::Val(v)) => items.push(v),
                None => return Err(PickleError::Malformed("missing MARK".into())),
            }
        }
        items.reverse();
        Ok(items)
    }
    fn top(stack: &mut [Item]) -> Result<&mut Value, PickleError> {
        match stack.last_mut() {
            Some(Item::Val(v)) => Ok(v),
            _ => Err(PickleError::Malformed("expected a value on the stack".into())),
        }
    }
    fn set_items(target: &mut Value, items: Vec<Value>) -> Result<(), PickleError> {
        if items.len() % 2 != 0 {
            return Err(PickleError::Malformed("odd number of dict items".into()));
        }
        let entries = match target {
            Value::Dict(d) => d,
            // `OrderedDict()` arrives as a call; it becomes a plain ordered dict.
            Value::Call(f, _) if matches!(&**f, Value::Global(m, n) if m == "collections" && n == "OrderedDict") => {
                *target = Value::Dict(Vec::new());
                match target {
                    Value::Dict(d) => d,
                    _ => unreachable!(),
                }
            }
            _ => return Err(PickleError::Malformed("SETITEM on a non-dict".into())),
        };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            entries.push((k, v));
        }
        Ok(())
    }

    loop {
        let at = r.pos;
        let op = r.u8()?;
        match op {
            0x80 => {
                r.u8()?; // PROTO
            }
            0x95 => {
                r.u64()?; // FRAME
            }
            b'.' => {
                let v = pop(&mut stack)?;
                return Ok((v, r.pos));
            }
            b'(' => stack.push(Item::Mark),
            b'N' => stack.push(Item::Val(Value::None)),
            0x88 => stack.push(Item::Val(Value::Bool(true))),
            0x89 => stack.push(Item::Val(Value::Bool(false))),
            b'K' => stack.push(Item::Val(Value::Int(i64::from(r.u8()?)))),
            b'M' => stack.push(Item::Val(Value::Int(i64::from(r.u16()?)))),
            b'J' => stack.push(Item::Val(Value::Int(i64::from(r.i32()?)))),
            0x8a => {
                // LONG1: little-endian two's complement of n bytes
                let n = r.u8()? as usize;
                let bytes = r.take(n)?;
                if n > 8 {
                    stack.push(Item::Val(Value::BigInt(bytes.to_vec())));
                    continue;
                }
                let mut v: i64 = 0;
                for (i, b) in bytes.iter().enumerate() {
                    v |= i64::from(*b) << (8 * i);
                }
                if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(Item::Val(Value::Int(v)));
            }
            b'G' => stack.push(Item::Val(Value::Float(f64::from_be_bytes(r.take(8)?.try_into().expect("8"))))),
            b'X' => {
                let n = r.u32()? as usize;
                stack.push(Item::Val(Value::Str(r.string(n)?)));
            }
            0x8c => {
                let n = r.u8()? as usize;
                stack.push(Item::Val(Value::Str(r.string(n)?)));
            }
            b'U' => {
                // SHORT_BINSTRING (protocol 2 `str` in Python 2 pickles)
                let n = r.u8()? as usize;
                stack.push(Item::Val(Value::Str(r.string(n)?)));
            }
            b'T' => {
                let n = r.u32()? as usize;
                stack.push(Item::Val(Value::Str(r.string(n)?)));
            }
            b'C' => {
                let n = r.u8()? as usize;
                stack.push(Item::Val(Value::Bytes(r.take(n)?.to_vec())));
            }
            b'B' => {
                let n = r.u32()? as usize;
                stack.push(Item::Val(Value::Bytes(r.take(n)?.to_vec())));
            }
            b')' => stack.push(Item::Val(Value::Tuple(Vec::new()))),
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Item::Val(Value::Tuple(items)));
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let mut items = (0..n).map(|_| pop(&mut stack)).collect::<Result<Vec<_>, _>>()?;
                items.reverse();
                stack.push(Item::Val(Value::Tuple(items)));
            }
            b']' => stack.push(Item::Val(Value::List(Vec::new()))),
            b'l' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Item::Val(Value::List(items)));
            }
            b'a' => {
                let v = pop(&mut stack)?;
                match top(&mut stack)? {
                    Value::List(l) => l.push(v),
                    _ => return Err(PickleError::Malformed("APPEND to a non-list".into())),
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                match top(&mut stack)? {
                    Value::List(l) => l.extend(items),
                    _ => return Err(PickleError::Malformed("APPENDS to a non-list".into())),
                }
            }
            b'}' => stack.push(Item::Val(Value::Dict(Vec::new()))),
            b'd' => {
                let items = pop_mark(&mut stack)?;
                let mut d = Value::Dict(Vec::new());
                set_items(&mut d, items)?;
                stack.push(Item::Val(d));
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                set_items(top(&mut stack)?, vec![k, v])?;
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                set_items(top(&mut stack)?, items)?;
            }
            b'c' => {
                let module = r.line()?.to_string();
                let name = r.line()?.to_string();
                stack.push(Item::Val(Value::Global(module, name)));
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Item::Val(Value::Global(m, n))),
                    _ => return Err(PickleError::Malformed("STACK_GLOBAL needs two strings".into())),
                }
            }
            b'R' | 0x81 => {
                // REDUCE / NEWOBJ: keep the call symbolic.
                let args = pop(&mut stack)?;
                let f = pop(&mut stack)?;
                let args = match args {
                    Value::Tuple(a) => a,
                    other => vec![other],
                };
                stack.push(Item::Val(Value::Call(Box::new(f), args)));
            }
            b'b' => {
                // BUILD: object state (e.g. an OrderedDict's `_metadata`); not needed.
                pop(&mut stack)?;
                top(&mut stack)?;
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                stack.push(Item::Val(Value::PersistentId(Box::new(pid))));
            }
            b'q' => {
                let i = u32::from(r.u8()?);
                memo.insert(i, top(&mut stack)?.clone());
            }
            b'r' => {
                let i = r.u32()?;
                memo.insert(i, top(&mut stack)?.clone());
            }
            0x94 => {
                let i = memo.len() as u32;
                memo.insert(i, top(&mut stack)?.clone());
            }
            b'h' | b'j' => {
                let i = if op == b'h' { u32::from(r.u8()?) } else { r.u32()? };
                let v = memo.get(&i).ok_or_else(|| PickleError::Malformed(format!("memo {i} unset")))?;
                stack.push(Item::Val(v.clone()));
            }
            b'0' => {
                stack.pop();
            }
            _ => return Err(PickleError::Opcode(op, at)),
        }
    }
}

/// Writes protocol-2 pickles.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        let mut w = Writer { buf: Vec::new() };
        w.buf.extend_from_slice(&[0x80, 2]);
        w
    }
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.push(b'.');
        self.buf
    }
    pub fn mark(&mut self) {
        self.buf.push(b'(');
    }
    pub fn none(&mut self) {
        self.buf.push(b'N');
    }
    pub fn bool(&mut self, b: bool) {
        self.buf.push(if b { 0x88 } else { 0x89 });
    }
    pub fn int(&mut self, v: i64) {
        if (0..256).contains(&v) {
            self.buf.extend_from_slice(&[b'K', v as u8]);
        } else if let Ok(v32) = i32::try_from(v) {
            self.buf.push(b'J');
            self.buf.extend_from_slice(&v32.to_le_bytes());
        } else {
            self.buf.extend_from_slice(&[0x8a, 8]);
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
    }
    pub fn float(&mut self, v: f64) {
        self.buf.push(b'G');
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub fn str(&mut self, s: &str) {
        self.buf.push(b'X');
        self.buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(s.as_bytes());
    }
    pub fn global(&mut self, module: &str, name: &str) {
        self.buf.push(b'c');
        self.buf.extend_from_slice(module.as_bytes());
        self.buf.push(b'\n');
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(b'\n');
    }
    /// Closes the items since the last MARK into a tuple.
    pub fn tuple(&mut self) {
        self.buf.push(b't');
    }
    pub fn empty_tuple(&mut self) {
        self.buf.push(b')');
    }
    pub fn reduce(&mut self) {
        self.buf.push(b'R');
    }
    pub fn binpersid(&mut self) {
        self.buf.push(b'Q');
    }
    pub fn empty_dict(&mut self) {
        self.buf.push(b'}');
    }
    pub fn empty_list(&mut self) {
        self.buf.push(b']');
    }
    /// Adds the key/value pairs since the last MARK to the dict below it.
    pub fn setitems(&mut self) {
        self.buf.push(b'u');
    }
    /// Appends the items since the last MARK to the list below it.
    pub fn appends(&mut self) {
        self.buf.push(b'e');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_written_values() {
        let mut w = Writer::new();
        w.global("collections", "OrderedDict");
        w.empty_tuple();
        w.reduce();
        w.mark();
        w.str("a");
        w.int(-5);
        w.str("b");
        w.mark();
        w.float(1.5);
        w.bool(true);
        w.none();
        w.int(1 << 40);
        w.int(300);
        w.tuple();
        w.str("c");
        w.empty_list();
        w.mark();
        w.str("x");
        w.appends();
        w.setitems();
        let bytes = w.finish();
        let (v, n) = unpickle(&bytes).unwrap();
        assert_eq!(n, bytes.len());
        assert_eq!(v.get("a"), Some(&Value::Int(-5)));
        assert_eq!(
            v.get("b"),
            Some(&Value::Tuple(vec![
                Value::Float(1.5),
                Value::Bool(true),
                Value::None,
                Value::Int(1 << 40),
                Value::Int(300)
            ]))
        );
        assert_eq!(v.get("c"), Some(&Value::List(vec![Value::Str("x".into())])));
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(unpickle(&[0x80, 2, b'K']), Err(PickleError::Truncated));
        assert!(matches!(unpickle(&[0x80, 2, 0xff]), Err(PickleError::Opcode(0xff, 2))));
        assert!(unpickle(b".").is_err());
    }

    #[test]
    fn negative_long1() {
        // LONG1 with 2 bytes 0xff 0xff = -1
        let (v, _) = unpickle(&[0x8a, 2, 0xff, 0xff, b'.']).unwrap();
        assert_eq!(v, Value::Int(-1));
    }
}
