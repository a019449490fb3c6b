//! The `bitnet` Python module: the bitnet-rs engine from Python (PyO3, abi3).
//!
//! ```python
//! import bitnet
//! model = bitnet.Model("models/bitnet-b1.58-kjv-i2_s.gguf", threads=2)
//! print(model.generate("In the beginning", max_tokens=32, temperature=0))
//! ```
//!
//! Built by maturin (`scripts/build-py.sh`, or `pip install ./crates/bitnet-py`); tested by
//! pytest in `tests/`. Type stubs: `bitnet.pyi`.

mod convert;
mod core;
mod errors;
mod model;
mod options;
mod stream;

use pyo3::prelude::*;

/// Python bindings of bitnet-rs, an engine for BitNet b1.58 ternary language models.
#[pymodule]
#[pyo3(name = "bitnet")]
fn bitnet_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    errors::register(m)?;
    m.add_class::<model::Model>()?;
    m.add_class::<model::Completion>()?;
    m.add_class::<stream::TextStream>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
