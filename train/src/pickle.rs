//! The subset of Python's pickle format that `torch.save` files use: a small unpickler that
//! builds a [`Value`] tree without executing anything, and a writer for protocol 2.
//!
//! Reading is a loop of [`OpCode::read`] (one instruction decoded from the bytes) and
//! [`Machine::execute`] (its effect on the stack and memo). Globals and `REDUCE` calls are kept
//! symbolic ([`Value::Global`], [`Value::Call`]); the caller interprets the few that torch
//! uses (`_rebuild_tensor_v2`, `OrderedDict`, storages).
//!
//! Pickles written by others are untrusted. As `torch.load(weights_only=True)` does, only the
//! globals a state dict needs are accepted ([`ALLOWED_GLOBALS`]); and since a memo reference
//! copies a value, a few bytes could ask for an exponential number of copies, so the values
//! built are counted against a budget proportional to the input, and nesting is bounded.

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
    #[error("pickle refers to '{0}', which a weights file has no use for (only tensors, storages and OrderedDict are accepted, as torch.load(weights_only=True) does)")]
    ForbiddenGlobal(String),
    #[error("pickle too large or too deep: {0}")]
    Limit(String),
}

/// The globals a torchvision state dict or a training checkpoint may refer to.
pub const ALLOWED_GLOBALS: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch", "FloatStorage"),
    ("torch", "DoubleStorage"),
    ("torch", "HalfStorage"),
    ("torch", "BFloat16Storage"),
    ("torch", "LongStorage"),
    ("torch", "IntStorage"),
    ("torch", "ShortStorage"),
    ("torch", "CharStorage"),
    ("torch", "ByteStorage"),
    ("torch", "BoolStorage"),
];

/// Deepest nesting of containers accepted (a state dict needs four levels).
pub const MAX_DEPTH: usize = 100;

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

/// One pickle instruction, decoded with its argument.
#[derive(Debug, Clone, PartialEq)]
pub enum OpCode {
    Proto(u8),
    Frame(u64),
    Stop,
    Mark,
    None,
    Bool(bool),
    Int(i64),
    BigInt(Vec<u8>),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    EmptyTuple,
    /// TUPLE: the items since the last mark.
    Tuple,
    /// TUPLE1..3: the top `n` items.
    TupleN(usize),
    EmptyList,
    /// LIST: the items since the last mark.
    List,
    Append,
    Appends,
    EmptyDict,
    /// DICT: key/value pairs since the last mark.
    Dict,
    SetItem,
    SetItems,
    /// GLOBAL (module and name in the instruction).
    Global(String, String),
    /// STACK_GLOBAL (module and name from the stack).
    StackGlobal,
    /// REDUCE and NEWOBJ.
    Reduce,
    Build,
    BinPersId,
    /// BINPUT / LONG_BINPUT.
    Put(u32),
    Memoize,
    /// BINGET / LONG_BINGET.
    Get(u32),
    Pop,
}

/// Reads the instruction bytes.
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
    fn array<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }
    fn u8(&mut self) -> Result<u8, PickleError> {
        Ok(self.take(1)?[0])
    }
    fn u32_len(&mut self) -> Result<usize, PickleError> {
        Ok(u32::from_le_bytes(self.array()?) as usize)
    }
    fn line(&mut self) -> Result<String, PickleError> {
        let rest = &self.data[self.pos..];
        let nl = rest.iter().position(|&b| b == b'\n').ok_or(PickleError::Truncated)?;
        self.pos += nl + 1;
        String::from_utf8(rest[..nl].to_vec()).map_err(|_| PickleError::Malformed("non-UTF-8 text".into()))
    }
    fn string(&mut self, n: usize) -> Result<String, PickleError> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| PickleError::Malformed("invalid UTF-8 string".into()))
    }
}

impl OpCode {
    /// Decodes the instruction at the reader's position. One arm per opcode, as the pickle
    /// format lists them: a table to read down, kept in one place on purpose.
    fn read(r: &mut Reader) -> Result<OpCode, PickleError> {
        let at = r.pos;
        let op = r.u8()?;
        Ok(match op {
            0x80 => OpCode::Proto(r.u8()?),
            0x95 => OpCode::Frame(u64::from_le_bytes(r.array()?)),
            b'.' => OpCode::Stop,
            b'(' => OpCode::Mark,
            b'N' => OpCode::None,
            0x88 => OpCode::Bool(true),
            0x89 => OpCode::Bool(false),
            b'K' => OpCode::Int(i64::from(r.u8()?)),
            b'M' => OpCode::Int(i64::from(u16::from_le_bytes(r.array()?))),
            b'J' => OpCode::Int(i64::from(i32::from_le_bytes(r.array()?))),
            0x8a => {
                // LONG1: little-endian two's complement of n bytes
                let n = usize::from(r.u8()?);
                let bytes = r.take(n)?;
                if n > 8 {
                    OpCode::BigInt(bytes.to_vec())
                } else {
                    let mut v: i64 = 0;
                    for (i, b) in bytes.iter().enumerate() {
                        v |= i64::from(*b) << (8 * i);
                    }
                    if n > 0 && n < 8 && bytes[n - 1] & 0x80 != 0 {
                        v -= 1i64 << (8 * n);
                    }
                    OpCode::Int(v)
                }
            }
            b'G' => OpCode::Float(f64::from_be_bytes(r.array()?)),
            // BINUNICODE, SHORT_BINUNICODE, SHORT_BINSTRING, BINSTRING
            b'X' | b'T' => {
                let n = r.u32_len()?;
                OpCode::Str(r.string(n)?)
            }
            0x8c | b'U' => {
                let n = usize::from(r.u8()?);
                OpCode::Str(r.string(n)?)
            }
            b'C' => {
                let n = usize::from(r.u8()?);
                OpCode::Bytes(r.take(n)?.to_vec())
            }
            b'B' => {
                let n = r.u32_len()?;
                OpCode::Bytes(r.take(n)?.to_vec())
            }
            b')' => OpCode::EmptyTuple,
            b't' => OpCode::Tuple,
            0x85..=0x87 => OpCode::TupleN(usize::from(op - 0x84)),
            b']' => OpCode::EmptyList,
            b'l' => OpCode::List,
            b'a' => OpCode::Append,
            b'e' => OpCode::Appends,
            b'}' => OpCode::EmptyDict,
            b'd' => OpCode::Dict,
            b's' => OpCode::SetItem,
            b'u' => OpCode::SetItems,
            b'c' => {
                let module = r.line()?;
                OpCode::Global(module, r.line()?)
            }
            0x93 => OpCode::StackGlobal,
            b'R' | 0x81 => OpCode::Reduce,
            b'b' => OpCode::Build,
            b'Q' => OpCode::BinPersId,
            b'q' => OpCode::Put(u32::from(r.u8()?)),
            b'r' => OpCode::Put(u32::from_le_bytes(r.array()?)),
            0x94 => OpCode::Memoize,
            b'h' => OpCode::Get(u32::from(r.u8()?)),
            b'j' => OpCode::Get(u32::from_le_bytes(r.array()?)),
            b'0' => OpCode::Pop,
            _ => return Err(PickleError::Opcode(op, at)),
        })
    }
}

/// A value on the stack with its size (nodes in it) and nesting depth, tracked so that copies
/// and containers can be bounded without walking the tree.
#[derive(Debug, Clone)]
struct StackValue {
    value: Value,
    nodes: usize,
    depth: usize,
}

impl StackValue {
    fn leaf(value: Value) -> StackValue {
        StackValue { value, nodes: 1, depth: 0 }
    }
}

enum Item {
    Mark,
    Val(StackValue),
}

/// The unpickler's state: a stack, the memo, and the budget of values it may still build.
struct Machine {
    stack: Vec<Item>,
    memo: HashMap<u32, StackValue>,
    budget: usize,
}

impl Machine {
    fn charge(&mut self, nodes: usize) -> Result<(), PickleError> {
        self.budget = self.budget.checked_sub(nodes).ok_or_else(|| {
            PickleError::Limit(
                "it builds far more values than its size allows (repeated copies of memoised values)".into(),
            )
        })?;
        Ok(())
    }

    fn push(&mut self, v: StackValue) -> Result<(), PickleError> {
        if v.depth > MAX_DEPTH {
            return Err(PickleError::Limit(format!("containers nested more than {MAX_DEPTH} levels deep")));
        }
        self.stack.push(Item::Val(v));
        Ok(())
    }

    fn leaf(&mut self, v: Value) -> Result<(), PickleError> {
        self.charge(1)?;
        self.push(StackValue::leaf(v))
    }

    fn pop(&mut self) -> Result<StackValue, PickleError> {
        match self.stack.pop() {
            Some(Item::Val(v)) => Ok(v),
            _ => Err(PickleError::Malformed("stack underflow".into())),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<StackValue>, PickleError> {
        let mut items = Vec::new();
        loop {
            match self.stack.pop() {
                Some(Item::Mark) => break,
                Some(Item::Val(v)) => items.push(v),
                None => return Err(PickleError::Malformed("missing MARK".into())),
            }
        }
        items.reverse();
        Ok(items)
    }

    fn top(&mut self) -> Result<&mut StackValue, PickleError> {
        match self.stack.last_mut() {
            Some(Item::Val(v)) => Ok(v),
            _ => Err(PickleError::Malformed("expected a value on the stack".into())),
        }
    }

    /// A container of `items`, built by `make`.
    fn container(&mut self, items: Vec<StackValue>, make: impl FnOnce(Vec<Value>) -> Value) -> Result<(), PickleError> {
        self.charge(1)?;
        let nodes = 1 + items.iter().map(|i| i.nodes).sum::<usize>();
        let depth = 1 + items.iter().map(|i| i.depth).max().unwrap_or(0);
        self.push(StackValue { value: make(items.into_iter().map(|i| i.value).collect()), nodes, depth })
    }

    /// Adds `items` to the container on top of the stack.
    fn extend_top(&mut self, items: Vec<StackValue>, dict: bool) -> Result<(), PickleError> {
        let top = self.top()?;
        top.nodes += items.iter().map(|i| i.nodes).sum::<usize>();
        top.depth = top.depth.max(1 + items.iter().map(|i| i.depth).max().unwrap_or(0));
        if top.depth > MAX_DEPTH {
            return Err(PickleError::Limit(format!("containers nested more than {MAX_DEPTH} levels deep")));
        }
        let values = items.into_iter().map(|i| i.value);
        if dict {
            set_items(&mut top.value, values.collect())
        } else {
            match &mut top.value {
                Value::List(l) => {
                    l.extend(values);
                    Ok(())
                }
                _ => Err(PickleError::Malformed("APPEND to a non-list".into())),
            }
        }
    }

    /// Applies one instruction; returns the result at STOP. One arm per opcode (a table to
    /// read down, kept in one place on purpose); the work is in the helpers above.
    fn execute(&mut self, op: OpCode) -> Result<Option<Value>, PickleError> {
        match op {
            OpCode::Proto(_) | OpCode::Frame(_) => {}
            OpCode::Stop => return Ok(Some(self.pop()?.value)),
            OpCode::Mark => self.stack.push(Item::Mark),
            OpCode::None => self.leaf(Value::None)?,
            OpCode::Bool(b) => self.leaf(Value::Bool(b))?,
            OpCode::Int(i) => self.leaf(Value::Int(i))?,
            OpCode::BigInt(b) => self.leaf(Value::BigInt(b))?,
            OpCode::Float(f) => self.leaf(Value::Float(f))?,
            OpCode::Str(s) => self.leaf(Value::Str(s))?,
            OpCode::Bytes(b) => self.leaf(Value::Bytes(b))?,
            OpCode::EmptyTuple => self.leaf(Value::Tuple(Vec::new()))?,
            OpCode::Tuple => {
                let items = self.pop_mark()?;
                self.container(items, Value::Tuple)?;
            }
            OpCode::TupleN(n) => {
                let mut items = (0..n).map(|_| self.pop()).collect::<Result<Vec<_>, _>>()?;
                items.reverse();
                self.container(items, Value::Tuple)?;
            }
            OpCode::EmptyList => self.leaf(Value::List(Vec::new()))?,
            OpCode::List => {
                let items = self.pop_mark()?;
                self.container(items, Value::List)?;
            }
            OpCode::Append => {
                let v = self.pop()?;
                self.extend_top(vec![v], false)?;
            }
            OpCode::Appends => {
                let items = self.pop_mark()?;
                self.extend_top(items, false)?;
            }
            OpCode::EmptyDict => self.leaf(Value::Dict(Vec::new()))?,
            OpCode::Dict => {
                let items = self.pop_mark()?;
                self.leaf(Value::Dict(Vec::new()))?;
                self.extend_top(items, true)?;
            }
            OpCode::SetItem => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.extend_top(vec![k, v], true)?;
            }
            OpCode::SetItems => {
                let items = self.pop_mark()?;
                self.extend_top(items, true)?;
            }
            OpCode::Global(module, name) => self.global(module, name)?,
            OpCode::StackGlobal => {
                let name = self.pop()?.value;
                let module = self.pop()?.value;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => self.global(m, n)?,
                    _ => return Err(PickleError::Malformed("STACK_GLOBAL needs two strings".into())),
                }
            }
            OpCode::Reduce => {
                // Kept symbolic: the caller interprets the allowed callables.
                let args = self.pop()?;
                let f = self.pop()?;
                let (nodes, depth) = (1 + f.nodes + args.nodes, 1 + f.depth.max(args.depth));
                let args = match args.value {
                    Value::Tuple(a) => a,
                    other => vec![other],
                };
                self.charge(1)?;
                self.push(StackValue { value: Value::Call(Box::new(f.value), args), nodes, depth })?;
            }
            OpCode::Build => {
                // Object state (e.g. an OrderedDict's `_metadata`): not needed.
                self.pop()?;
                self.top()?;
            }
            OpCode::BinPersId => {
                let pid = self.pop()?;
                self.charge(1)?;
                let (nodes, depth) = (pid.nodes + 1, pid.depth + 1);
                self.push(StackValue { value: Value::PersistentId(Box::new(pid.value)), nodes, depth })?;
            }
            OpCode::Put(i) => self.memoize(i)?,
            OpCode::Memoize => self.memoize(self.memo.len() as u32)?,
            OpCode::Get(i) => {
                let v = self.memo.get(&i).ok_or_else(|| PickleError::Malformed(format!("memo {i} unset")))?.clone();
                self.charge(v.nodes)?;
                self.push(v)?;
            }
            OpCode::Pop => {
                self.stack.pop();
            }
        }
        Ok(None)
    }

    /// Keeps a copy of the top value under `index` (charged: the copy is memory too).
    fn memoize(&mut self, index: u32) -> Result<(), PickleError> {
        let v = self.top()?.clone();
        self.charge(v.nodes)?;
        self.memo.insert(index, v);
        Ok(())
    }

    fn global(&mut self, module: String, name: String) -> Result<(), PickleError> {
        if !ALLOWED_GLOBALS.iter().any(|(m, n)| *m == module && *n == name) {
            return Err(PickleError::ForbiddenGlobal(format!("{module}.{name}")));
        }
        self.leaf(Value::Global(module, name))
    }
}

fn set_items(target: &mut Value, items: Vec<Value>) -> Result<(), PickleError> {
    if items.len() % 2 != 0 {
        return Err(PickleError::Malformed("odd number of dict items".into()));
    }
    // `OrderedDict()` arrives as a call; it becomes a plain ordered dict.
    if matches!(target, Value::Call(f, _) if matches!(&**f, Value::Global(m, n) if m == "collections" && n == "OrderedDict"))
    {
        *target = Value::Dict(Vec::new());
    }
    let Value::Dict(entries) = target else {
        return Err(PickleError::Malformed("SETITEM on a non-dict".into()));
    };
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        entries.push((k, v));
    }
    Ok(())
}

/// Unpickles one object from the start of `data`; returns it and the number of bytes read
/// (legacy torch files hold several pickles back to back).
pub fn unpickle(data: &[u8]) -> Result<(Value, usize), PickleError> {
    let mut r = Reader { data, pos: 0 };
    // Every instruction builds at most one value directly; copies from the memo are charged
    // by size. A state dict builds a few values per byte; this allows sixteen.
    let mut m = Machine { stack: Vec::new(), memo: HashMap::new(), budget: 16 * data.len() + 1024 };
    loop {
        let op = OpCode::read(&mut r)?;
        if let Some(v) = m.execute(op)? {
            return Ok((v, r.pos));
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

    /// A tensor as `torch.save` pickles it: `torch._utils._rebuild_tensor_v2(storage, 0, size,
    /// stride, False, OrderedDict())`, the storage being the persistent id
    /// `("storage", torch.<storage_class>, key, "cpu", numel)`.
    pub fn rebuild_tensor(&mut self, storage_class: &str, key: &str, numel: i64, size: &[i64], stride: &[i64]) {
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.mark();
        self.mark();
        self.str("storage");
        self.global("torch", storage_class);
        self.str(key);
        self.str("cpu");
        self.int(numel);
        self.tuple();
        self.binpersid();
        self.int(0);
        for dims in [size, stride] {
            self.mark();
            for &d in dims {
                self.int(d);
            }
            self.tuple();
        }
        self.bool(false);
        self.global("collections", "OrderedDict");
        self.empty_tuple();
        self.reduce();
        self.tuple();
        self.reduce();
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
    fn only_the_globals_of_a_state_dict_are_accepted() {
        let mut w = Writer::new();
        w.global("os", "system");
        let err = unpickle(&w.finish()).unwrap_err();
        assert_eq!(err, PickleError::ForbiddenGlobal("os.system".into()));
        assert!(err.to_string().contains("weights_only"), "{err}");
        // STACK_GLOBAL is checked the same way.
        let data = [&[0x80, 4, 0x8c, 8][..], b"builtins", &[0x8c, 4], b"eval", &[0x93, b'.']].concat();
        assert_eq!(unpickle(&data).unwrap_err(), PickleError::ForbiddenGlobal("builtins.eval".into()));
    }

    #[test]
    fn copies_and_nesting_are_bounded() {
        // A list memoised, then two copies of it put in a new list, memoised again, ...:
        // 2^60 values from a few hundred bytes.
        let mut data = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..60 {
            data.extend([b'(', b'h', 0, b'h', 0, b'l', b'q', 0]);
        }
        data.push(b'.');
        assert!(matches!(unpickle(&data), Err(PickleError::Limit(_))));
        // Lists nested 10,000 deep.
        let mut deep = vec![0x80, 2];
        deep.extend(std::iter::repeat_n(b']', 10_000));
        deep.extend(std::iter::repeat_n(b'a', 9_999));
        deep.push(b'.');
        let err = unpickle(&deep).unwrap_err();
        assert!(err.to_string().contains("nested more than 100"), "{err}");
    }

    #[test]
    fn negative_long1() {
        // LONG1 with 2 bytes 0xff 0xff = -1
        let (v, _) = unpickle(&[0x8a, 2, 0xff, 0xff, b'.']).unwrap();
        assert_eq!(v, Value::Int(-1));
    }
}
