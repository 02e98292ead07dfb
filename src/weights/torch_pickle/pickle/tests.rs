//! Unit tests of the restricted unpickler on hand-assembled pickles.

use super::*;
use crate::weights::RawDType;

/// A tiny pickle assembler.
#[derive(Default)]
struct P(Vec<u8>);

impl P {
    fn proto(n: u8) -> Self {
        P(vec![0x80, n])
    }
    fn op(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
    fn str(self, s: &str) -> Self {
        let len = (s.len() as u32).to_le_bytes();
        self.op(b"X").op(&len).op(s.as_bytes())
    }
    fn int(self, i: u8) -> Self {
        self.op(&[b'K', i])
    }
    fn global(self, module: &str, name: &str) -> Self {
        self.op(b"c")
            .op(module.as_bytes())
            .op(b"\n")
            .op(name.as_bytes())
            .op(b"\n")
    }
    fn put(self, i: u8) -> Self {
        self.op(&[b'q', i])
    }
    fn get(self, i: u8) -> Self {
        self.op(&[b'h', i])
    }
    fn stop(self) -> Vec<u8> {
        self.op(b".").0
    }
}

fn run(bytes: &[u8]) -> Result<Unpickled> {
    unpickle(bytes, 0, "test.pkl")
}

fn err(bytes: &[u8]) -> String {
    match run(bytes) {
        Ok(u) => panic!("expected an error, got {:?}", u.root),
        Err(e) => e.to_string(),
    }
}

fn dict<'a>(u: &'a Unpickled, v: &Value) -> &'a Dict {
    match v {
        Value::Dict(id) => match u.arena.get(*id) {
            Some(Obj::Dict(d)) => d,
            other => panic!("not a dict: {other:?}"),
        },
        other => panic!("not a dict: {other:?}"),
    }
}

/// `{'a': 1, 'b': (2, 'x')}` via EMPTY_DICT / MARK / SETITEMS, as torch writes dicts.
fn small_dict() -> Vec<u8> {
    P::proto(2)
        .op(b"}")
        .put(0)
        .op(b"(")
        .str("a")
        .int(1)
        .str("b")
        .int(2)
        .str("x")
        .op(&[0x86])
        .op(b"u")
        .stop()
}

#[test]
fn dict_of_scalars_and_tuples() {
    let u = run(&small_dict()).unwrap();
    let d = dict(&u, &u.root);
    let [(Value::Str(a), Value::Int(1)), (Value::Str(b), Value::Tuple(t))] = d.entries() else {
        panic!("{:?}", d.entries())
    };
    assert_eq!((&**a, &**b), ("a", "b"));
    assert!(matches!(u.arena.tuple(*t), [Value::Int(2), Value::Str(s)] if &**s == "x"));
    assert_eq!(u.end, small_dict().len());
}

#[test]
fn memo_sees_later_mutation_and_keys_replace() {
    // d = {}; memo[0] = d; t = (d, d) built from the memo; then d['k'] = 1; d['k'] = 2.
    let bytes = P::proto(2)
        .op(b"}")
        .put(0)
        .get(0)
        .op(&[0x86])
        .get(0)
        .str("k")
        .int(1)
        .op(b"s")
        .str("k")
        .int(2)
        .op(b"s")
        .op(b"0") // pop d, leaving the tuple
        .stop();
    let u = run(&bytes).unwrap();
    let Value::Tuple(t) = u.root else {
        panic!("{:?}", u.root)
    };
    for v in u.arena.tuple(t) {
        let d = dict(&u, v);
        assert!(matches!(d.entries(), [(Value::Str(k), Value::Int(2))] if &**k == "k"));
    }
}

#[test]
fn long_integers_decode_like_python() {
    let magic = P::proto(2)
        .op(&[
            0x8a, 10, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
        ])
        .stop();
    assert!(matches!(
        run(&magic).unwrap().root,
        Value::Int(0x1950a86a20f9469cfc6c)
    ));
    let minus_two = P::proto(2).op(&[0x8a, 1, 0xfe]).stop();
    assert!(matches!(run(&minus_two).unwrap().root, Value::Int(-2)));
    let zero = P::proto(2).op(&[0x8a, 0]).stop();
    assert!(matches!(run(&zero).unwrap().root, Value::Int(0)));
    let huge = P::proto(2).op(&[0x8a, 17]).op(&[1; 17]).stop();
    assert!(err(&huge).contains("too large"));
    let bininit = P::proto(2).op(b"J").op(&(-7i32).to_le_bytes()).stop();
    assert!(matches!(run(&bininit).unwrap().root, Value::Int(-7)));
}

#[test]
fn protocol_4_framing_memoize_and_stack_global() {
    // FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL, EMPTY_TUPLE, REDUCE -> OrderedDict().
    let bytes = P::proto(4)
        .op(&[0x95])
        .op(&30u64.to_le_bytes())
        .op(&[0x8c, 11])
        .op(b"collections")
        .op(&[0x94, 0x8c, 11])
        .op(b"OrderedDict")
        .op(&[0x94, 0x93, 0x94])
        .op(b")R")
        .op(&[0x94])
        .stop();
    let u = run(&bytes).unwrap();
    assert!(dict(&u, &u.root).entries().is_empty());
}

#[test]
fn forbidden_globals_are_named() {
    let os_system = P::proto(2)
        .global("os", "system")
        .str("echo pwned")
        .op(&[0x85])
        .op(b"R")
        .stop();
    assert!(err(&os_system).contains("`os.system` is not allowed"));
    let eval = P::proto(4)
        .op(&[0x8c, 8])
        .op(b"builtins")
        .op(&[0x8c, 4])
        .op(b"eval")
        .op(&[0x93])
        .stop();
    assert!(err(&eval).contains("`builtins.eval` is not allowed"));
    let storage_like = P::proto(2).global("torch", "ComplexFloatStorage").stop();
    assert!(err(&storage_like).contains("torch.ComplexFloatStorage"));
}

#[test]
fn stack_and_memo_misuse_are_errors() {
    assert!(err(&P::proto(2).op(b"t").stop()).contains("MARK"));
    assert!(err(&P::proto(2).op(b"0").stop()).contains("MARK"));
    assert!(err(&P::proto(2).stop()).contains("underflow"));
    assert!(err(&P::proto(2).op(&[0x86]).stop()).contains("underflow"));
    assert!(err(&P::proto(2).get(3).stop()).contains("memo key 3"));
    assert!(err(&P::proto(2).put(0).stop()).contains("empty stack"));
    assert!(err(&P::proto(2).int(1).int(2).op(b"s").stop()).contains("underflow"));
    assert!(err(&P::proto(2).int(1).int(2).int(3).op(b"s").stop()).contains("list or dict"));
    assert!(err(&P::proto(2).op(b"]").int(1).int(2).op(b"s").stop()).contains("not a dict"));
    assert!(err(&P::proto(2).op(b"}").int(1).op(b"a").stop()).contains("not a list"));
    assert!(err(&P::proto(2).op(b"}(").int(1).op(b"u").stop()).contains("odd"));
    assert!(err(&P::proto(2).int(1).op(b")R").stop()).contains("not a global"));
    assert!(err(&P::proto(2).int(1).int(2).op(b"b").stop()).contains("BUILD on a int"));
    assert!(err(&P::proto(6).stop()).contains("protocol 6"));
    assert!(err(&P::proto(2).op(b"I1\n").stop()).contains("unsupported opcode 0x49"));
    let bad_utf8 = P::proto(2)
        .op(b"X")
        .op(&2u32.to_le_bytes())
        .op(&[0xff, 0xfe])
        .stop();
    assert!(err(&bad_utf8).contains("UTF-8"));
}

#[test]
fn allowed_globals_reject_wrong_arguments() {
    let od_with_args = P::proto(2)
        .global("collections", "OrderedDict")
        .int(1)
        .op(&[0x85])
        .op(b"R")
        .stop();
    assert!(err(&od_with_args).contains("cannot call collections.OrderedDict"));
    let rebuild_no_storage = P::proto(2)
        .global("torch._utils", "_rebuild_tensor")
        .op(b"(")
        .int(0)
        .int(0)
        .op(b")")
        .op(b")")
        .op(b"tR")
        .stop();
    assert!(err(&rebuild_no_storage).contains("not a storage"));
    let call_storage = P::proto(2).global("torch", "FloatStorage").op(b")R").stop();
    assert!(err(&call_storage).contains("cannot call torch storage class"));
}

/// `_rebuild_tensor_v2(pid('storage', FloatStorage, '0', 'cpu', 6), 1, size, stride, False, {})`.
fn tensor_pickle(size: &[u8], stride: &[u8], tag: &str) -> Vec<u8> {
    let mut p = P::proto(2)
        .global("torch._utils", "_rebuild_tensor_v2")
        .op(b"((")
        .str(tag)
        .global("torch", "FloatStorage")
        .str("0")
        .str("cpu")
        .int(6)
        .op(b"tQ")
        .int(1)
        .op(b"(");
    for &s in size {
        p = p.int(s);
    }
    p = p.op(b"t(");
    for &s in stride {
        p = p.int(s);
    }
    p.op(b"t").op(&[0x89]).op(b"}").op(b"tR").stop()
}

#[test]
fn rebuild_tensor_v2_describes_the_view() {
    let u = run(&tensor_pickle(&[2, 2], &[1, 2], "storage")).unwrap();
    let Value::Tensor(t) = &u.root else {
        panic!("{:?}", u.root)
    };
    assert_eq!(
        (t.offset, &t.shape[..], &t.stride[..]),
        (1, &[2, 2][..], &[1, 2][..])
    );
    assert_eq!(t.storage.dtype, RawDType::F32);
    assert_eq!((&*t.storage.key, t.storage.numel), ("0", 6));
    assert_eq!(u.storages.len(), 1);
    assert!(err(&tensor_pickle(&[2, 2], &[1], "storage")).contains("differ in rank"));
    assert!(err(&tensor_pickle(&[2], &[1], "module")).contains("`module` is not supported"));
}

#[test]
fn truncation_and_garbling_never_panic() {
    let good = tensor_pickle(&[2, 3], &[3, 1], "storage");
    for cut in 0..good.len() {
        assert!(run(&good[..cut]).is_err(), "prefix of {cut} bytes parsed");
    }
    for at in 0..good.len() {
        for x in [0x01, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[at] ^= x;
            let _ = run(&bad);
        }
    }
}

#[test]
fn deep_and_shared_structures_are_cheap() {
    // 200k nested 1-tuples: no recursion anywhere (building or dropping).
    let mut p = P::proto(2).op(b")");
    for _ in 0..200_000 {
        p = p.op(&[0x85]);
    }
    assert!(run(&p.stop()).is_ok());
    // t = (t, t) 64 times through the memo: 2^64 leaves if copied, O(1) each here.
    let mut p = P::proto(2).op(b")").put(0);
    for _ in 0..64 {
        p = p.get(0).get(0).op(&[0x86]).put(0).op(b"0");
    }
    assert!(run(&p.get(0).stop()).is_ok());
}
