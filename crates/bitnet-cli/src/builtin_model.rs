//! The default model (the KJV demo, 8.9 MB) compiled into the binary, so `bitnet run` works
//! from any directory and after `cargo install`, with nothing to find on disk.

/// How the built-in model is named in reports.
pub const NAME: &str = "bitnet-b1.58-kjv-i2_s.gguf (built in)";
/// What the server calls it in /v1/models.
pub const ALIAS: &str = "bitnet-b1.58-kjv-i2_s";

static BYTES: &[u8] = include_bytes!("../../../models/bitnet-b1.58-kjv-i2_s.gguf");

/// The model, loaded from the copy in the binary. (A `--tokenizer` override needs a model
/// on disk: the built-in one carries its own.)
pub fn load(
    tokenizer: Option<&std::path::Path>,
    placement: bitnet_models::Placement,
) -> anyhow::Result<bitnet_models::LoadedModel> {
    anyhow::ensure!(
        tokenizer.is_none(),
        "--tokenizer needs a model file or folder (-m); the built-in model has its own tokenizer"
    );
    Ok(bitnet_models::load_gguf_bytes(
        BYTES.to_vec(),
        NAME,
        placement,
    )?)
}
