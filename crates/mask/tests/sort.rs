//! Tied values are ranked as PyTorch's CPU `sort` ranks them (fixture from
//! `python3 scripts/sort_golden.py`, among its cases TorchRay's own generator masks).

use std::path::PathBuf;

use candle_core::Device;
use extremal_mask::sort::torch_order;

#[test]
fn ties_are_ranked_as_pytorch_ranks_them() -> Result<(), Box<dyn std::error::Error>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/torch_sort.safetensors");
    let tensors = candle_core::safetensors::load(&path, &Device::Cpu)?;
    let mut names: Vec<&String> = tensors.keys().filter(|k| k.ends_with(".values")).collect();
    names.sort();
    assert!(names.len() >= 9, "fixture cases: {names:?}");
    for name in names {
        let case = name.trim_end_matches(".values");
        let values: Vec<f64> = tensors[name].to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
        let expect: Vec<i64> = tensors[&format!("{case}.order")]
            .to_dtype(candle_core::DType::I64)?
            .to_vec1::<i64>()?;
        let got: Vec<i64> = torch_order(&values).into_iter().map(i64::from).collect();
        let first = got.iter().zip(&expect).position(|(a, b)| a != b);
        assert_eq!(first, None, "{case}: first difference at rank {first:?}");
        let stable = (0..values.len())
            .all(|i| i == 0 || got[i - 1] < got[i] || values[got[i - 1] as usize] != values[got[i] as usize]);
        println!(
            "{case}: {} values, same order as PyTorch (a stable sort would agree: {stable})",
            values.len()
        );
    }
    Ok(())
}
