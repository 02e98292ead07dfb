//! Materialising a strided tensor view of a storage into dense row-major bytes.
//!
//! A torch tensor is `(storage, storage_offset, size, stride)`, all in elements of the storage's
//! dtype: element `[i0, .., in]` lives at `offset + Σ ik·stride_k`. Saved views keep their
//! storage, so a transposed weight, a slice or an `expand`ed tensor (stride 0) comes back exactly
//! as torch describes it; several tensors may share one storage.

use super::value::TensorRef;
use crate::error::{Error, Result};
use crate::weights::RawTensor;

/// Copies the elements of `tensor` out of `storage` (the bytes of the storage it names, already
/// restricted to a legacy storage view if it has one) into a dense [`RawTensor`].
pub(crate) fn materialize(
    tensor: &TensorRef,
    storage: &[u8],
    file: &str,
    name: &str,
) -> Result<RawTensor> {
    let dtype = tensor.storage.dtype;
    let es = dtype.size_in_bytes();
    let fail = |message: String| Error::format(file, format!("tensor `{name}`: {message}"));
    let available = storage.len() / es;

    let numel = tensor
        .shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| fail(format!("size {:?} overflows", tensor.shape)))?;
    if numel == 0 {
        return RawTensor::new(dtype, tensor.shape.clone(), Vec::new(), file, name);
    }
    // Largest element index the view touches.
    let last = tensor
        .shape
        .iter()
        .zip(&tensor.stride)
        .try_fold(tensor.offset, |acc, (&d, &s)| {
            (d - 1).checked_mul(s).and_then(|x| acc.checked_add(x))
        })
        .filter(|&last| last < available)
        .ok_or_else(|| {
            fail(format!(
                "view (offset {}, size {:?}, stride {:?}) reaches past its storage of {available} \
                 {dtype} element(s)",
                tensor.offset, tensor.shape, tensor.stride
            ))
        })?;
    let nbytes = numel
        .checked_mul(es)
        .ok_or_else(|| fail(format!("size {:?} overflows", tensor.shape)))?;
    let mut out = Vec::new();
    out.try_reserve_exact(nbytes)
        .map_err(|_| fail(format!("cannot allocate {nbytes} bytes")))?;

    let slice = |start: usize, count: usize| -> Result<&[u8]> {
        storage
            .get(start * es..(start + count) * es)
            .ok_or_else(|| {
                fail(format!(
                    "element range {start}+{count} out of bounds (at {last})"
                ))
            })
    };
    let rank = tensor.shape.len();
    // Innermost run: contiguous when the last stride is 1 (or the tensor is 0-d).
    let (run, run_stride) = match (tensor.shape.last(), tensor.stride.last()) {
        (Some(&d), Some(&s)) => (d, s),
        _ => (1, 1),
    };
    let outer = rank.saturating_sub(1);
    let mut index = vec![0usize; outer];
    let mut base = tensor.offset;
    loop {
        if run_stride == 1 {
            out.extend_from_slice(slice(base, run)?);
        } else {
            for i in 0..run {
                out.extend_from_slice(slice(base + i * run_stride, 1)?);
            }
        }
        // Odometer over the outer dimensions, keeping `base` = offset + Σ index_k·stride_k.
        let mut k = outer;
        loop {
            if k == 0 {
                return RawTensor::new(dtype, tensor.shape.clone(), out, file, name);
            }
            k -= 1;
            let (Some(i), Some(&d), Some(&s)) =
                (index.get_mut(k), tensor.shape.get(k), tensor.stride.get(k))
            else {
                return Err(fail("internal: rank mismatch".into()));
            };
            *i += 1;
            base += s;
            if *i < d {
                break;
            }
            base -= s * d;
            *i = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;
    use crate::weights::torch_pickle::value::StorageRef;
    use crate::weights::RawDType;

    fn view(offset: usize, shape: &[usize], stride: &[usize]) -> TensorRef {
        TensorRef {
            storage: Rc::new(StorageRef {
                key: "0".into(),
                dtype: RawDType::U8,
                numel: 12,
                view: None,
            }),
            offset,
            shape: shape.to_vec(),
            stride: stride.to_vec(),
        }
    }

    const STORAGE: [u8; 12] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11];

    fn run(t: &TensorRef) -> Result<Vec<u8>> {
        materialize(t, &STORAGE, "f", "t").map(|r| r.data)
    }

    #[test]
    fn contiguous_transposed_sliced_expanded() {
        assert_eq!(run(&view(0, &[3, 4], &[4, 1])).unwrap(), STORAGE.to_vec());
        // Transpose of the 3x4 matrix.
        assert_eq!(
            run(&view(0, &[4, 3], &[1, 4])).unwrap(),
            vec![0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
        );
        // [1:3, 1:3] with a storage offset.
        assert_eq!(run(&view(5, &[2, 2], &[4, 1])).unwrap(), vec![5, 6, 9, 10]);
        // Every other column.
        assert_eq!(
            run(&view(1, &[3, 2], &[4, 2])).unwrap(),
            vec![1, 3, 5, 7, 9, 11]
        );
        // expand: stride 0.
        assert_eq!(
            run(&view(2, &[2, 3], &[0, 1])).unwrap(),
            vec![2, 3, 4, 2, 3, 4]
        );
        // 0-d and empty tensors.
        assert_eq!(run(&view(7, &[], &[])).unwrap(), vec![7]);
        assert_eq!(run(&view(99, &[0, 3], &[3, 1])).unwrap(), Vec::<u8>::new());
        // 3-d with a permutation.
        assert_eq!(
            run(&view(0, &[2, 2, 3], &[1, 6, 2])).unwrap(),
            vec![0, 2, 4, 6, 8, 10, 1, 3, 5, 7, 9, 11]
        );
    }

    #[test]
    fn out_of_bounds_and_overflow_are_errors() {
        assert!(run(&view(1, &[3, 4], &[4, 1])).is_err());
        assert!(run(&view(12, &[], &[])).is_err());
        assert!(run(&view(0, &[2, usize::MAX], &[1, 1])).is_err());
        assert!(run(&view(0, &[usize::MAX, usize::MAX], &[0, 0])).is_err());
        assert!(run(&view(usize::MAX, &[2], &[1])).is_err());
    }
}
